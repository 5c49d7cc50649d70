"""Content-addressed blob store on fsspec: a local folder by default, any fsspec URL otherwise.

Blobs are named by the sha256 of their bytes, so the same image produced by two shards, two
re-runs or two machines lands in the same place once, and a name can be cached forever.

The database keeps only these names (`<sha256>.<ext>`), never where the store lives: the
store's URL comes from the settings, so a data folder can be moved, restored elsewhere or
copied to object storage and every name still resolves.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import IO

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,16}$")
BLOB_NAME = re.compile(r"^[0-9a-f]{64}\.[A-Za-z0-9]{1,16}$")

# Object stores publish an object whole on close, so the temp-name-then-move dance would only
# add a server-side copy; everywhere else a reader could see a half-written file without it.
_ATOMIC_PUT_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"}


class MissingBlob(FileNotFoundError):
    """The store has no bytes for a name the database refers to."""

    def __init__(self, name: str, store_url: str) -> None:
        super().__init__(f"blob {name} is missing from the blob store at {store_url}")
        self.name = name


def blob_name(reference: str) -> str:
    """The blob name of a reference: a name as `put` returns it, or an absolute URI that an
    older store wrote (`file:///.../blobs/3f/ff/3fff<...>.npy`), whose last segment is its name."""
    name = reference.rstrip("/").rsplit("/", 1)[-1]
    if not BLOB_NAME.match(name):
        raise ValueError(f"not a blob name or blob URI: {reference!r}")
    return name


class BlobStore:
    """`put` bytes, get back their name; `get`/`open`/`exists` take names.

    Layout: `{root}/ab/cd/abcd<...64 hex...>.png`. Two levels of fan-out keep directories small
    on local disks, and the file name alone is enough to find a blob again, which is what the
    database stores and the web server's `/blobs/{name}` route uses.
    """

    def __init__(self, url: str, **storage_options: object) -> None:
        self.url = url
        self.fs, root = url_to_fs(url, **storage_options)
        self.root = root.rstrip("/") or root
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self._direct_put = bool(set(protocols) & _ATOMIC_PUT_PROTOCOLS)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            self.fs.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"BlobStore({self.url!r})"

    # -- naming ---------------------------------------------------------------------------
    blob_name = staticmethod(blob_name)

    def path_for(self, reference: str) -> str:
        """Store-internal path of a blob name (or of a legacy URI's name)."""
        name = blob_name(reference)
        return f"{self.root}/{name[:2]}/{name[2:4]}/{name}"

    def uri_for(self, reference: str) -> str:
        """Where a name lives in this store right now, as an absolute fsspec URI."""
        return self.fs.unstrip_protocol(self.path_for(reference))

    # -- operations -----------------------------------------------------------------------
    def put(self, data: bytes, suffix: str = ".png") -> str:
        """Store bytes; returns their name, which is what the database keeps."""
        if not _SUFFIX.match(suffix):
            raise ValueError(f"suffix must look like '.png', got {suffix!r}")
        name = hashlib.sha256(data).hexdigest() + suffix.lower()
        path = self.path_for(name)
        if self.fs.exists(path):
            return name  # same bytes, already there: content addressing makes rewriting pointless
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if self._direct_put:
            self.fs.pipe_file(path, data)
            return name
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            self.fs.pipe_file(tmp, data)
            # On a local disk this is a rename: readers see no file or the whole file. Two
            # writers racing on the same name write identical bytes, so either winning is fine.
            self.fs.mv(tmp, path)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
        return name

    def get(self, reference: str) -> bytes:
        """The bytes of a name; `MissingBlob` (a FileNotFoundError) if the store lacks them."""
        path = self.path_for(reference)
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            raise MissingBlob(blob_name(reference), self.url) from None

    def exists(self, reference: str) -> bool:
        return self.fs.exists(self.path_for(reference))

    def open(self, reference: str, mode: str = "rb") -> IO[bytes]:
        """A file object for streaming large blobs; read-only, since blobs never change."""
        if mode != "rb":
            raise ValueError("blobs are immutable; open them with mode 'rb'")
        path = self.path_for(reference)
        try:
            return self.fs.open(path, "rb")
        except FileNotFoundError:
            raise MissingBlob(blob_name(reference), self.url) from None
