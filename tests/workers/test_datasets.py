"""Dataset registration from folders, fsspec URLs, tar shards and the synthetic world."""

from __future__ import annotations

import io
import tarfile
import uuid

import fsspec
import pytest
from sqlalchemy import func, select

from store import repository
from store.blobs import BlobStore
from store.models import DatasetImage, StoredImage
from store.session import make_engine, make_sessionmaker
from precompute.errors import MicroscopeError
from tests.workers.precompute_helpers import png_bytes, single_thread, write_world_folder
from workers.datasets import DatasetSource, register_dataset


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture
def sessions(migrated_url):
    engine = make_engine(migrated_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _items(sessions, dataset_id):
    with sessions() as session:
        return repository.dataset_items(session, dataset_id)


def test_folder_is_read_recursively_and_bad_files_are_counted(sessions, tmp_path):
    root = write_world_folder(tmp_path / "images" / "a", 3)
    write_world_folder(tmp_path / "images" / "b", 2, seed=1, fmt="JPEG")
    (tmp_path / "images" / "b" / "0000.webp").write_bytes(_webp())
    (tmp_path / "images" / "a" / "0001x-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "images" / "a" / "0002x-truncated.png").write_bytes((root / "0002.png").read_bytes()[:200])
    (tmp_path / "images" / "a" / "copy.png").write_bytes((root / "0000.png").read_bytes())  # duplicate
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    blobs = BlobStore(str(tmp_path / "blobs"))

    report = register_dataset(sessions, blobs, "mixed", DatasetSource("folder", str(tmp_path / "images")))
    assert report.images == 6 and report.duplicates == 1
    assert sorted(name for name, _ in report.skipped) == ["a/0001x-corrupt.png", "a/0002x-truncated.png"]
    items = _items(sessions, "mixed")
    assert [p for p, *_ in items] == list(range(6))
    assert [blobs.blob_name(uri).rsplit(".", 1)[1] for *_, uri in items] == ["png"] * 3 + ["jpg", "webp", "jpg"]

    # Idempotent: the same source again changes nothing; another id shares the stored images.
    again = register_dataset(sessions, blobs, "mixed", DatasetSource("folder", str(tmp_path / "images")))
    assert again.images == 6 and _items(sessions, "mixed") == items
    register_dataset(sessions, blobs, "mixed-too", DatasetSource("folder", str(tmp_path / "images" / "a")))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(StoredImage)) == 6
        assert session.scalar(select(func.count()).select_from(DatasetImage)) == 6 + 3
        assert repository.get_dataset(session, "mixed").image_count == 6
    with pytest.raises(MicroscopeError, match="already registered"):
        register_dataset(sessions, blobs, "mixed", DatasetSource("folder", str(tmp_path / "images" / "b")))


def test_url_tar_and_synthetic_sources(sessions, tmp_path):
    blobs = BlobStore(str(tmp_path / "blobs"))
    root = f"memory://datasets-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for index in range(3):
        fs.pipe_file(f"{root}/sub/{index}.png", png_bytes((index, 0, 0)))
    fs.pipe_file(f"{root}/broken.jpg", b"\xff\xd8 nope")
    report = register_dataset(sessions, blobs, "remote", DatasetSource("url", root))
    assert report.images == 3 and [name for name, _ in report.skipped] == ["broken.jpg"]
    fs.rm(root, recursive=True)

    for shard in range(2):
        with tarfile.open(tmp_path / f"shard-{shard}.tar", "w") as archive:
            for index in range(2):
                data = png_bytes((shard, index, 7))
                info = tarfile.TarInfo(f"{index:03d}.png")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    (tmp_path / "shard-2.tar").write_bytes(b"garbage that is no tar")
    report = register_dataset(sessions, blobs, "shards", DatasetSource("tar", str(tmp_path / "shard-*.tar")))
    assert report.images == 4 and [name for name, _ in report.skipped] == ["shard-2.tar"]

    report = register_dataset(sessions, blobs, "world", DatasetSource("synthetic", "", count=5, seed=3))
    assert report.images == 5 and report.source == "synthetic://world?count=5&seed=3"
    with sessions() as session:
        assert [d.id for d in repository.list_datasets(session)] == ["remote", "shards", "world"]


def test_bad_locations_are_user_errors(sessions, tmp_path):
    blobs = BlobStore(str(tmp_path / "blobs"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"nope")
    cases = [
        (DatasetSource("folder", str(tmp_path / "missing")), "does not exist"),
        (DatasetSource("folder", str(tmp_path / "empty")), "holds no JPEG, PNG or WebP"),
        (DatasetSource("folder", str(tmp_path / "junk")), "none of the 1 images"),
        (DatasetSource("tar", str(tmp_path / "*.tar")), "no tar shards"),
        (DatasetSource("synthetic", "", count=0), "at least 1"),
    ]
    for index, (source, message) in enumerate(cases):
        with pytest.raises(MicroscopeError, match=message):
            register_dataset(sessions, blobs, f"bad-{index}", source)
    with pytest.raises(MicroscopeError, match="dataset id"):
        register_dataset(sessions, blobs, "Bad Id", DatasetSource("synthetic", "", count=1))
    with sessions() as session:
        assert repository.list_datasets(session) == []  # failed registrations leave nothing behind


def _webp() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="WEBP")
    return buffer.getvalue()
