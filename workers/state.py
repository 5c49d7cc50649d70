"""Where resumable jobs keep their accumulator state between checkpoints.

A state is an .npz of named arrays plus a JSON metadata record, written through fsspec under
`<blob_url>/job-state/` (a local folder by default, object storage on a cluster, so a shard
can resume on another machine). Writes are atomic on local disks (temp name, then rename);
object stores publish whole objects. A state file is only trusted once a committed job row
points at it (`jobs.state_uri`), so a file written just before a crash is simply ignored and
overwritten by the re-run.

Rows and state metadata keep a state's file name (`examples-12-0000000100.npz`), relative to
this store, never its absolute location: a data folder that moves, or a shard that resumes on
another machine with the store mounted elsewhere, still finds its checkpoints.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from typing import Any

import numpy as np
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

_META = "__meta__"
# What `save` names a state: the caller's name (kind, job id, cursor) plus the .npz suffix.
_STATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.npz$")


def state_url_for(blob_url: str) -> str:
    return blob_url.rstrip("/") + "/job-state"


def state_name(reference: str) -> str:
    """The file name of a state reference: a name as `save` returns it, or an absolute URI an
    older store wrote, whose last segment is its name."""
    name = reference.rstrip("/").rsplit("/", 1)[-1]
    if not _STATE_NAME.match(name):
        raise ValueError(f"not a job state name or URI: {reference!r}")
    return name


class StateStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = url_to_fs(url)
        self.root = root.rstrip("/") or root
        self._local = isinstance(self.fs, LocalFileSystem)
        if self._local:
            self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, reference: str) -> str:
        return f"{self.root}/{state_name(reference)}"

    def uri(self, reference: str) -> str:
        """Where a state lives in this store right now, as an absolute fsspec URI."""
        return self.fs.unstrip_protocol(self._path(reference))

    def save(self, name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
        """Write a state; returns its reference (the file name), which is what rows keep."""
        buffer = io.BytesIO()
        payload = {_META: np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8), **arrays}
        np.savez(buffer, **payload)
        reference = f"{name}.npz"
        path = self._path(reference)
        if self._local:
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            self.fs.pipe_file(tmp, buffer.getvalue())
            self.fs.mv(tmp, path)
        else:
            self.fs.pipe_file(path, buffer.getvalue())
        return reference

    def load(self, reference: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        with np.load(io.BytesIO(self.fs.cat_file(self._path(reference))), allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files if name != _META}
            meta = json.loads(data[_META].tobytes().decode())
        return arrays, meta

    def meta(self, reference: str) -> dict[str, Any]:
        """Only the metadata record (npz members load lazily: the arrays are not read)."""
        with self.fs.open(self._path(reference), "rb") as handle, np.load(handle, allow_pickle=False) as data:
            return json.loads(data[_META].tobytes().decode())

    def cleanup(self, prefix: str, keep: set[str]) -> int:
        """Delete this store's files named `prefix*` whose references are not in `keep`
        (checkpoints written just before a crash and never committed). Returns how many went."""
        kept = {state_name(reference) for reference in keep if reference}
        removed = 0
        for path in self.fs.glob(f"{self.root}/{prefix}*.npz"):
            name = path.rsplit("/", 1)[-1]
            if name not in kept:
                self.delete(name)
                removed += 1
        return removed

    def delete(self, reference: str | None) -> None:
        if not reference:
            return
        try:
            self.fs.rm_file(self._path(reference))
        except FileNotFoundError:
            pass
