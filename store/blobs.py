"""Content-addressed blob store on fsspec: a local folder by default, any fsspec URL otherwise.

Blobs are named by the sha256 of their bytes, so the same image produced by two shards, two
re-runs or two machines lands in the same place once, and a URI can be cached forever.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import IO

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,16}$")
BLOB_NAME = re.compile(r"^[0-9a-f]{64}\.[A-Za-z0-9]{1,16}$")

# Object stores publish an object whole on close, so the temp-name-then-move dance would only
# add a server-side copy; everywhere else a reader could see a half-written file without it.
_ATOMIC_PUT_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"}


class BlobStore:
    """`put` bytes, get back a URI; `get`/`open`/`exists` take those URIs.

    Layout: `{root}/ab/cd/abcd<...64 hex...>.png`. Two levels of fan-out keep directories small
    on local disks, and the file name alone (`blob_name`) is enough to find a blob again, which
    is what the web server's `/blobs/{name}` route uses.
    """

    def __init__(self, url: str, **storage_options: object) -> None:
        self.url = url
        self.fs, root = url_to_fs(url, **storage_options)
        self.root = root.rstrip("/") or root
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self._direct_put = bool(set(protocols) & _ATOMIC_PUT_PROTOCOLS)
        if isinstance(self.fs, LocalFileSystem):
            self.fs.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"BlobStore({self.url!r})"

    # -- naming ---------------------------------------------------------------------------
    def path_for(self, name: str) -> str:
        """Store-internal path of a blob name (`<sha256><suffix>`)."""
        if not BLOB_NAME.match(name):
            raise ValueError(f"not a blob name: {name!r}")
        return f"{self.root}/{name[:2]}/{name[2:4]}/{name}"

    def uri_for(self, name: str) -> str:
        return self.fs.unstrip_protocol(self.path_for(name))

    @staticmethod
    def blob_name(uri: str) -> str:
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        if not BLOB_NAME.match(name):
            raise ValueError(f"not a blob URI: {uri!r}")
        return name

    def _own_path(self, uri: str) -> str | None:
        """The path inside this store's filesystem, or None if the URI points elsewhere."""
        try:
            name = self.blob_name(uri)
        except ValueError:
            return None
        return self.path_for(name) if uri == self.uri_for(name) else None

    # -- operations -----------------------------------------------------------------------
    def put(self, data: bytes, suffix: str = ".png") -> str:
        if not _SUFFIX.match(suffix):
            raise ValueError(f"suffix must look like '.png', got {suffix!r}")
        name = hashlib.sha256(data).hexdigest() + suffix.lower()
        path = self.path_for(name)
        uri = self.fs.unstrip_protocol(path)
        if self.fs.exists(path):
            return uri  # same bytes, already there: content addressing makes rewriting pointless
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if self._direct_put:
            self.fs.pipe_file(path, data)
            return uri
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            self.fs.pipe_file(tmp, data)
            # On a local disk this is a rename: readers see no file or the whole file. Two
            # writers racing on the same name write identical bytes, so either winning is fine.
            self.fs.mv(tmp, path)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
        return uri

    def get(self, uri: str) -> bytes:
        path = self._own_path(uri)
        if path is not None:
            return self.fs.cat_file(path)
        with fsspec.open(uri, "rb") as f:
            return f.read()

    def exists(self, uri: str) -> bool:
        path = self._own_path(uri)
        if path is not None:
            return self.fs.exists(path)
        fs, p = url_to_fs(uri)
        return fs.exists(p)

    def open(self, uri: str, mode: str = "rb") -> IO[bytes]:
        """A file object for streaming large blobs; read-only, since blobs never change."""
        if mode != "rb":
            raise ValueError("blobs are immutable; open them with mode 'rb'")
        path = self._own_path(uri)
        if path is not None:
            return self.fs.open(path, "rb")
        return fsspec.open(uri, "rb").open()
