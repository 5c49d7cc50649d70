"""Content addressing on a real local folder and on fsspec's in-memory filesystem; names that
resolve wherever the store is; what a lost blob looks like; the presence check pages use."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from app.blob_presence import BlobPresence
from store.blobs import BlobStore, MissingBlob, blob_name


def _memory_root() -> str:
    return f"memory://blobs-{uuid.uuid4().hex}"


def _drop_memory(root: str) -> None:
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield BlobStore(str(tmp_path / "blobs"))
        return
    root = _memory_root()
    yield BlobStore(root)
    _drop_memory(root)


def _identity(store: BlobStore, name: str) -> object:
    """Something that changes if the file is rewritten, even with the same bytes."""
    path = store.path_for(name)
    if "memory" in store.fs.protocol:
        return id(store.fs.store[path])
    return os.stat(path).st_ino, os.stat(path).st_mtime_ns


def test_put_returns_the_content_name_and_writes_once(store: BlobStore) -> None:
    data = b"\x89PNG fake image bytes"
    name = store.put(data)
    sha = hashlib.sha256(data).hexdigest()
    assert name == f"{sha}.png"
    assert store.path_for(name) == f"{store.root}/{sha[:2]}/{sha[2:4]}/{sha}.png"
    assert store.exists(name)
    assert store.get(name) == data
    with store.open(name) as f:
        assert f.read() == data

    before = _identity(store, name)
    assert store.put(data) == name
    assert _identity(store, name) == before
    # No temporary files left behind next to the blob.
    folder = store.path_for(name).rsplit("/", 1)[0]
    assert [p.rsplit("/", 1)[-1] for p in store.fs.ls(folder, detail=False)] == [f"{sha}.png"]


def test_different_bytes_different_name(store: BlobStore) -> None:
    a = store.put(b"one")
    b = store.put(b"two")
    c = store.put(b"one", suffix=".jpg")
    assert len({a, b, c}) == 3
    assert c == hashlib.sha256(b"one").hexdigest() + ".jpg"
    assert store.get(a) == b"one" and store.get(b) == b"two"


def test_names_resolve_in_a_moved_folder(tmp_path: Path) -> None:
    old = BlobStore(str(tmp_path / "old" / "blobs"))
    name = old.put(b"portable", suffix=".npy")
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    shutil.rmtree(tmp_path / "old")
    moved = BlobStore(str(tmp_path / "new" / "blobs"))
    assert moved.exists(name) and moved.get(name) == b"portable"
    assert not old.exists(name)


def test_names_resolve_after_a_copy_to_another_filesystem(tmp_path: Path) -> None:
    local = BlobStore(str(tmp_path / "blobs"))
    name = local.put(b"to object storage", suffix=".png")
    root = _memory_root()
    try:
        memory = fsspec.filesystem("memory")
        memory.put(str(tmp_path / "blobs"), root, recursive=True)
        remote = BlobStore(root)
        assert remote.get(name) == b"to object storage"
        with remote.open(name) as f:
            assert f.read() == b"to object storage"
    finally:
        _drop_memory(root)


def test_legacy_absolute_uri_resolves_by_its_name_inside_this_store(tmp_path: Path) -> None:
    """Rows an older store wrote hold `file:///<old folder>/blobs/ab/cd/<name>`: read through
    the store configured now, they find the blob there, whatever the old folder was."""
    store = BlobStore(str(tmp_path / "blobs"))
    name = store.put(b"legacy", suffix=".png")
    legacy = f"file:///home/someone/gone/blobs/{name[:2]}/{name[2:4]}/{name}"
    assert blob_name(legacy) == name
    assert store.exists(legacy) and store.get(legacy) == b"legacy"
    with store.open(legacy) as f:
        assert f.read() == b"legacy"


def test_a_lost_blob_is_a_missing_blob(store: BlobStore) -> None:
    name = store.put(b"soon gone")
    store.fs.rm_file(store.path_for(name))
    assert not store.exists(name)
    with pytest.raises(MissingBlob) as lost:
        store.get(name)
    assert lost.value.name == name and isinstance(lost.value, FileNotFoundError)
    with pytest.raises(MissingBlob):
        store.open(name)


def test_uri_for_is_where_the_store_is_now(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path / "b"))
    name = store.put(b"x", suffix=".webp")
    uri = store.uri_for(name)
    assert uri == f"file://{tmp_path}/b/{name[:2]}/{name[2:4]}/{name}"
    assert Path(uri.removeprefix("file://")).read_bytes() == b"x"


def test_rejects_bad_suffix_and_names(store: BlobStore) -> None:
    with pytest.raises(ValueError):
        store.put(b"x", suffix="png")
    with pytest.raises(ValueError):
        store.put(b"x", suffix="./../x")
    for bad in ("../../etc/passwd", "file:///etc/passwd", "A" * 64 + ".png", ""):
        with pytest.raises(ValueError):
            store.path_for(bad)
    assert not store.exists("0" * 64 + ".png")


def test_presence_on_a_local_disk_is_asked_every_time(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path / "blobs"))
    presence = BlobPresence(store)
    assert not presence.cached
    name = store.put(b"here")
    assert presence(name)
    os.remove(store.path_for(name))
    assert not presence(name)
    assert store.put(b"here") == name
    assert presence(name)


def test_cached_presence_remembers_what_it_saw(tmp_path: Path) -> None:
    """The object-storage policy, on a real folder: a name seen present is not asked again for
    `seen_seconds` (a page of known images costs no round trip), a missing one is asked again
    once `missing_seconds` have passed."""
    store = BlobStore(str(tmp_path / "blobs"))
    assert BlobPresence(BlobStore("memory://x")).cached is False
    presence = BlobPresence(store, cached=True, seen_seconds=600, missing_seconds=0)
    name = store.put(b"seen")
    assert presence(name)
    os.remove(store.path_for(name))
    assert presence(name)  # remembered: the store was not asked

    other = "f" * 64 + ".png"
    assert not presence(other)
    store.fs.makedirs(store.path_for(other).rsplit("/", 1)[0], exist_ok=True)
    Path(store.path_for(other)).write_bytes(b"restored")
    assert presence(other)  # missing answers expire at once here (missing_seconds=0)
