"""Registering datasets: a local folder, an fsspec URL, tar shards or the synthetic world.

Every image is read once, fully decoded to prove it is usable, hashed (sha256 of its bytes)
and copied into the content-addressed blob store: the same image is stored once however many
datasets or positions name it. A dataset is an ordered list of distinct images at positions
0..n-1; the order is deterministic (sorted paths, tar member order, world index), so
re-registering the same source gives the same positions and upserts change nothing.

Unreadable or corrupt images, and repeats of an image already in the dataset, are counted
and reported, never fatal. Errors the user can fix (no such path, nothing to read) are
`MicroscopeError`s.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sqlalchemy.orm import Session, sessionmaker

from store import repository
from store.blobs import BlobStore
from precompute.errors import MicroscopeError
from precompute.images import DECODE_ERRORS, decode_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "MPO": ".jpg"}
DATASET_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
COMMIT_EVERY = 256


@dataclass(frozen=True)
class DatasetSource:
    kind: str  # "folder" | "url" | "tar" | "synthetic"
    location: str  # folder path, URL, tar glob, or "" for synthetic
    count: int = 0  # synthetic only
    seed: int = 0  # synthetic only

    @property
    def uri(self) -> str:
        if self.kind == "synthetic":
            return f"synthetic://world?count={self.count}&seed={self.seed}"
        return self.location


@dataclass
class RegisterReport:
    dataset_id: str
    source: str
    images: int = 0
    seen: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    duplicates: int = 0
    new_blobs: int = 0

    def summary(self) -> str:
        text = f"registered dataset {self.dataset_id}: {self.images} images from {self.source}"
        extras = []
        if self.skipped:
            extras.append(f"{len(self.skipped)} unreadable skipped")
        if self.duplicates:
            extras.append(f"{self.duplicates} duplicates skipped")
        return text + (f" ({', '.join(extras)})" if extras else "")


def validate_dataset_id(dataset_id: str) -> str:
    if not DATASET_ID_PATTERN.match(dataset_id):
        raise MicroscopeError(
            f"dataset id '{dataset_id}' must be 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return dataset_id


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


# -- sources: yield (name, bytes) or (name, exception) in a deterministic order --------------------
def _folder(location: str) -> Iterator[tuple[str, bytes | Exception]]:
    root = Path(location).expanduser()
    if not root.exists():
        raise MicroscopeError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise MicroscopeError(f"{root} is not a folder")
    files = sorted((p for p in root.rglob("*") if p.is_file() and _is_image_name(p.name)), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise MicroscopeError(f"{root} holds no JPEG, PNG or WebP images")
    for path in files:
        name = path.relative_to(root).as_posix()
        try:
            yield name, path.read_bytes()
        except OSError as error:
            yield name, error


def _url(location: str) -> Iterator[tuple[str, bytes | Exception]]:
    from fsspec.core import url_to_fs

    try:
        fs, root = url_to_fs(location)
        exists = fs.exists(root)
    except (ImportError, ValueError) as error:
        raise MicroscopeError(f"cannot open {location}: {str(error).splitlines()[0]}") from None
    if not exists:
        raise MicroscopeError(f"dataset location {location} does not exist")
    paths = sorted(p for p in fs.find(root) if _is_image_name(p))
    if not paths:
        raise MicroscopeError(f"{location} holds no JPEG, PNG or WebP images")
    prefix = root.rstrip("/") + "/"
    for path in paths:
        name = path[len(prefix):] if path.startswith(prefix) else path
        try:
            yield name, fs.cat_file(path)
        except OSError as error:
            yield name, error


def _tar(pattern: str) -> Iterator[tuple[str, bytes | Exception]]:
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(pattern)
    shards = sorted(fs.glob(path)) if any(ch in path for ch in "*?[") else ([path] if fs.exists(path) else [])
    if not shards:
        raise MicroscopeError(f"no tar shards match {pattern}")
    found = False
    for shard in shards:
        shard_name = PurePosixPath(shard).name
        try:
            with fs.open(shard, "rb") as handle, tarfile.open(fileobj=handle, mode="r|*") as archive:
                for member in archive:
                    if not (member.isfile() and _is_image_name(member.name)):
                        continue
                    found = True
                    name = f"{shard_name}/{member.name}"
                    try:
                        data = archive.extractfile(member).read()
                    except (OSError, tarfile.TarError) as error:
                        yield name, error
                        continue
                    yield name, data
        except (OSError, tarfile.TarError, EOFError) as error:
            # A truncated or corrupt shard: what was read so far counts, the rest is reported.
            yield shard_name, error
    if not found:
        raise MicroscopeError(f"the tar shards matching {pattern} hold no JPEG, PNG or WebP images")


def _synthetic(count: int, seed: int) -> Iterator[tuple[str, bytes | Exception]]:
    from precompute.world import generate

    if count < 1:
        raise MicroscopeError("a synthetic dataset needs at least 1 image")
    for index in range(count):
        buffer = io.BytesIO()
        generate(seed, index).image.save(buffer, format="PNG")
        yield f"world-{seed}-{index:07d}.png", buffer.getvalue()


def iter_source(source: DatasetSource) -> Iterator[tuple[str, bytes | Exception]]:
    if source.kind == "folder":
        return _folder(source.location)
    if source.kind == "url":
        return _url(source.location)
    if source.kind == "tar":
        return _tar(source.location)
    if source.kind == "synthetic":
        return _synthetic(source.count, source.seed)
    raise MicroscopeError(f"unknown dataset source kind {source.kind!r}")


# -- registration -------------------------------------------------------------------------------
def register_dataset(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    dataset_id: str,
    source: DatasetSource,
    *,
    on_image=None,
) -> RegisterReport:
    """Read, check, hash and store every image of `source` as dataset `dataset_id`.

    Commits every COMMIT_EVERY images, so a killed registration re-run redoes little; the final
    image count and the removal of positions beyond it commit last.
    """
    validate_dataset_id(dataset_id)
    source_uri = source.uri if source.kind == "synthetic" else _canonical(source)
    with sessions() as session:
        existing = repository.get_dataset(session, dataset_id)
        if existing is not None and existing.source_uri != source_uri:
            raise MicroscopeError(
                f"dataset '{dataset_id}' is already registered from {existing.source_uri}; choose another id"
            )
    images = iter_source(source)  # raises for bad locations before anything is written
    first = next(images, None)
    report = RegisterReport(dataset_id, source_uri)
    seen: set[str] = set()
    pending: list[tuple[int, dict]] = []

    def flush(session: Session) -> None:
        ids = repository.add_images(session, [row for _, row in pending])
        repository.set_dataset_images(session, dataset_id, [(position, ids[row["sha256"]]) for position, row in pending])
        session.commit()
        pending.clear()

    with sessions() as session:
        repository.upsert_dataset(session, dataset_id, source_uri, source.kind)
        session.commit()
        stream = images if first is None else _chain(first, images)
        for name, data in stream:
            report.seen += 1
            if on_image:
                on_image()
            if isinstance(data, Exception):
                report.skipped.append((name, f"{type(data).__name__}: {data}"))
                continue
            sha = hashlib.sha256(data).hexdigest()
            if sha in seen:
                report.duplicates += 1
                continue
            try:
                with_format = _probe(data)
            except DECODE_ERRORS as error:
                report.skipped.append((name, f"{type(error).__name__}: {error}"))
                continue
            image_format, width, height = with_format
            uri = blobs.put(data, FORMAT_SUFFIX.get(image_format, ".img"))
            seen.add(sha)
            pending.append((report.images, {"sha256": sha, "blob_uri": uri, "width": width, "height": height}))
            report.images += 1
            if len(pending) >= COMMIT_EVERY:
                flush(session)
        if pending:
            flush(session)
        if report.images == 0:
            session.rollback()
            if existing is None:
                repository.delete_dataset(session, dataset_id)
            else:
                repository.trim_dataset(session, dataset_id, 0)
            session.commit()
            raise MicroscopeError(f"none of the {report.seen} images of {source_uri} could be read")
        repository.trim_dataset(session, dataset_id, report.images)
        session.commit()
    return report


def _chain(first, rest):
    yield first
    yield from rest


def _probe(data: bytes) -> tuple[str, int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image_format = image.format or ""
    if image_format not in FORMAT_SUFFIX:
        raise ValueError(f"unsupported image format {image_format or 'unknown'}")
    decoded = decode_image(data)  # full decode: truncated files fail here, not mid-precompute
    return image_format, decoded.width, decoded.height


def _canonical(source: DatasetSource) -> str:
    if source.kind == "folder":
        return str(Path(source.location).expanduser().resolve())
    return source.location
