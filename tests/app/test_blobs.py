"""Content addressing on a real local folder and on fsspec's in-memory filesystem."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from store.blobs import BlobStore


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield BlobStore(str(tmp_path / "blobs"))
        return
    root = f"memory://blobs-{uuid.uuid4().hex}"
    yield BlobStore(root)
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _identity(store: BlobStore, uri: str) -> object:
    """Something that changes if the file is rewritten, even with the same bytes."""
    path = store.path_for(store.blob_name(uri))
    if "memory" in store.fs.protocol:
        return id(store.fs.store[path])
    return os.stat(path).st_ino, os.stat(path).st_mtime_ns


def test_same_bytes_same_uri_written_once(store: BlobStore) -> None:
    data = b"\x89PNG fake image bytes"
    uri = store.put(data)
    sha = hashlib.sha256(data).hexdigest()
    assert uri.endswith(f"/{sha[:2]}/{sha[2:4]}/{sha}.png")
    assert store.exists(uri)
    assert store.get(uri) == data
    with store.open(uri) as f:
        assert f.read() == data

    before = _identity(store, uri)
    assert store.put(data) == uri
    assert _identity(store, uri) == before
    # No temporary files left behind next to the blob.
    folder = store.path_for(store.blob_name(uri)).rsplit("/", 1)[0]
    assert [p.rsplit("/", 1)[-1] for p in store.fs.ls(folder, detail=False)] == [f"{sha}.png"]


def test_different_bytes_different_uri(store: BlobStore) -> None:
    a = store.put(b"one")
    b = store.put(b"two")
    c = store.put(b"one", suffix=".jpg")
    assert len({a, b, c}) == 3
    assert store.get(a) == b"one" and store.get(b) == b"two"


def test_uris_are_absolute_and_reopenable(store: BlobStore, tmp_path: Path) -> None:
    uri = store.put(b"portable")
    # A URI is self-contained: another store (another process) can read it with fsspec alone.
    with fsspec.open(uri, "rb") as f:
        assert f.read() == b"portable"
    other = BlobStore(str(tmp_path / "elsewhere"))
    assert other.get(uri) == b"portable"
    assert other.exists(uri)


def test_local_uri_is_file_url(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path / "b"))
    uri = store.put(b"x", suffix=".webp")
    assert uri.startswith("file:///") and uri.endswith(".webp")
    assert Path(uri.removeprefix("file://")).read_bytes() == b"x"


def test_rejects_bad_suffix_and_names(store: BlobStore) -> None:
    with pytest.raises(ValueError):
        store.put(b"x", suffix="png")
    with pytest.raises(ValueError):
        store.put(b"x", suffix="./../x")
    with pytest.raises(ValueError):
        store.path_for("../../etc/passwd")
    assert not store.exists(store.uri_for("0" * 64 + ".png"))
