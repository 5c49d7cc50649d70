"""Where resumable jobs keep their accumulator state between checkpoints.

A state is an .npz of named arrays plus a JSON metadata record, written through fsspec under
`<blob_url>/job-state/` (a local folder by default, object storage on a cluster, so a shard
can resume on another machine). Writes are atomic on local disks (temp name, then rename);
object stores publish whole objects. A state file is only trusted once a committed job row
points at it (`jobs.state_uri`), so a file written just before a crash is simply ignored and
overwritten by the re-run.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import numpy as np
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

_META = "__meta__"


def state_url_for(blob_url: str) -> str:
    return blob_url.rstrip("/") + "/job-state"


class StateStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = url_to_fs(url)
        self.root = root.rstrip("/") or root
        self._local = isinstance(self.fs, LocalFileSystem)
        if self._local:
            self.fs.makedirs(self.root, exist_ok=True)

    def uri(self, name: str) -> str:
        return self.fs.unstrip_protocol(f"{self.root}/{name}.npz")

    def save(self, name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
        buffer = io.BytesIO()
        payload = {_META: np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8), **arrays}
        np.savez(buffer, **payload)
        path = f"{self.root}/{name}.npz"
        if self._local:
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            self.fs.pipe_file(tmp, buffer.getvalue())
            self.fs.mv(tmp, path)
        else:
            self.fs.pipe_file(path, buffer.getvalue())
        return self.fs.unstrip_protocol(path)

    def load(self, uri: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        fs, path = url_to_fs(uri)
        with np.load(io.BytesIO(fs.cat_file(path)), allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files if name != _META}
            meta = json.loads(data[_META].tobytes().decode())
        return arrays, meta

    def meta(self, uri: str) -> dict[str, Any]:
        """Only the metadata record (npz members load lazily: the arrays are not read)."""
        fs, path = url_to_fs(uri)
        with fs.open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
            return json.loads(data[_META].tobytes().decode())

    def cleanup(self, prefix: str, keep: set[str]) -> int:
        """Delete this store's files named `prefix*` whose URIs are not in `keep` (checkpoints
        written just before a crash and never committed). Returns how many went."""
        removed = 0
        for path in self.fs.glob(f"{self.root}/{prefix}*.npz"):
            if self.fs.unstrip_protocol(path) not in keep:
                self.delete(self.fs.unstrip_protocol(path))
                removed += 1
        return removed

    def delete(self, uri: str | None) -> None:
        if not uri:
            return
        fs, path = url_to_fs(uri)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
