"""Shared pieces of the precompute worker tests: stores, toy models, and a store snapshot
keyed by natural keys (image hashes, unit coordinates, blob names) so that two databases
can be compared row for row."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import select

from store.blobs import BlobStore
from store.models import (
    BucketSample,
    DatasetExample,
    Layer,
    StoredImage,
    Unit,
    WordActivation,
    WordEmbedding,
    WordList,
)
from store.session import make_engine, make_sessionmaker
from workers.engines import StoreConfig


# Tiny batches on a shared 2-core box: one torch thread each keeps OpenMP from spinning, so
# the tests cost CPU only for the work they do.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def single_thread():
    """Generator body for an autouse fixture: torch on one thread for the test, then restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def store_config(url: str, folder: Path) -> StoreConfig:
    return StoreConfig(url, str(folder / "blobs"))


def register_random(url: str, model_id: str, arch: str, loaded=None):
    from precompute.registry import load_model
    from store.loading import register

    loaded = loaded or load_model(model_id, arch)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        register(session, loaded)
    engine.dispose()
    return loaded


def register_synthetic(url: str, folder: Path, dataset_id: str, count: int, seed: int = 0):
    from workers.datasets import DatasetSource, register_dataset

    engine = make_engine(url)
    try:
        return register_dataset(make_sessionmaker(engine), BlobStore(str(folder / "blobs")), dataset_id,
                                DatasetSource("synthetic", "", count=count, seed=seed))
    finally:
        engine.dispose()


def write_world_folder(folder: Path, count: int, seed: int = 0, fmt: str = "PNG") -> Path:
    from precompute.world import generate

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        generate(seed, index).image.save(folder / f"{index:04d}.{fmt.lower()}", format=fmt)
    return folder


def png_bytes(color=(10, 20, 30), size=16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _name(uri: str | None) -> str | None:
    return None if uri is None else BlobStore.blob_name(uri)


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every precompute result in the store, keyed naturally and sorted."""
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            sha = dict(session.execute(select(StoredImage.id, StoredImage.sha256)).all())
            units = {
                uid: (model, layer, index)
                for uid, model, layer, index in session.execute(
                    select(Unit.id, Layer.model_id, Layer.name, Unit.index).join(Layer, Layer.id == Unit.layer_id)
                ).all()
            }
            layers = dict(((lid, (m, n)) for lid, m, n in session.execute(select(Layer.id, Layer.model_id, Layer.name)).all()))
            out: dict[str, list[tuple[Any, ...]]] = {}
            out["dataset_examples"] = sorted(
                (units[r.unit_id], r.dataset_id, r.sign, r.rank, sha[r.image_id], r.activation, r.position, _name(r.crop_uri),
                 r.crop_box)
                for r in session.execute(select(DatasetExample)).scalars()
            )
            out["bucket_samples"] = sorted(
                (units[r.unit_id], r.dataset_id, r.bucket, r.slot, r.low, r.high, sha[r.image_id], r.activation)
                for r in session.execute(select(BucketSample)).scalars()
            )
            out["unit_statistics"] = sorted(
                (units[r.id], r.mean, r.std, r.min, r.max, r.fraction_active, json.dumps(r.histogram, sort_keys=True))
                for r in session.execute(select(Unit).where(Unit.max.is_not(None))).scalars()
            )
            out["word_activations"] = sorted(
                (units[r.unit_id], r.word_list_id, r.rank, r.word, r.activation)
                for r in session.execute(select(WordActivation)).scalars()
            )
            out["word_embeddings"] = sorted(
                (layers[r.layer_id], r.word_list_id, _name(r.vectors_uri), _name(r.mean_uri))
                for r in session.execute(select(WordEmbedding)).scalars()
            )
            out["word_lists"] = sorted(
                (r.id, r.source, tuple(r.words), r.font, r.font_size, r.image_size)
                for r in session.execute(select(WordList)).scalars()
            )
            return out
    finally:
        engine.dispose()


def assert_same_store(a: dict, b: dict, moments_rel: float = 0.0) -> None:
    """Row-for-row equality. `moments_rel` > 0 allows that relative difference in unit means
    and standard deviations only (float sums merged in another order), nothing else."""
    import math

    assert a.keys() == b.keys()
    for table in a:
        assert len(a[table]) == len(b[table]), table
        for left, right in zip(a[table], b[table]):
            if moments_rel and table == "unit_statistics":
                assert math.isclose(left[1], right[1], rel_tol=moments_rel, abs_tol=1e-12), (left, right)
                assert math.isclose(left[2], right[2], rel_tol=moments_rel, abs_tol=1e-12), (left, right)
                left, right = left[:1] + left[3:], right[:1] + right[3:]
            assert left == right, (table, left, right)
