"""The examples pass end to end on the toy models and the synthetic world, on SQLite and
Postgres: every unit gets its examples, statistics, histogram and bucket samples."""

from __future__ import annotations

import sys
import threading
from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import select

from store import repository
from store.blobs import BlobStore
from store.models import BucketSample, DatasetExample, Job, Layer, StoredImage, Unit
from store.session import make_engine, make_sessionmaker
from precompute.crops import cell_box, model_view, png_bytes
from precompute.errors import MicroscopeError, UnknownLayerError
from precompute.examples import ExampleParams
from precompute.images import decode_image
from tests.workers.reference_activations import reference_values
from tests.workers.precompute_helpers import (
    assert_same_store,
    register_random,
    register_synthetic,
    single_thread,
    snapshot,
    store_config,
    write_world_folder,
)
from workers.datasets import DatasetSource, register_dataset
from workers.examples_job import ExamplesRequest, run_examples

PARAMS = ExampleParams(k=4, hist_bins=16, sample_bins=8, buckets=4, per_bucket=3)


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def toys():
    from precompute.registry import load_model

    return {arch: load_model(arch, arch) for arch in ("toy-rn", "toy-vit")}


def examples(url, folder, loaded, dataset, layers, **options):
    request = ExamplesRequest(model_id=loaded.model_id, dataset_id=dataset, layers=tuple(layers),
                              params=options.pop("params", PARAMS), batch_size=options.pop("batch_size", 8), **options)
    return run_examples(store_config(url, folder), request, show_progress=False, loaded=loaded)


def _check_layer(session, blobs, loaded, dataset, layer_name, images, recomputed):
    spec = loaded.spec.layer(layer_name)
    layer = session.scalar(select(Layer).where(Layer.model_id == loaded.model_id, Layer.name == layer_name))
    units = session.scalars(select(Unit).where(Unit.layer_id == layer.id).order_by(Unit.index)).all()
    assert len(units) == spec.units
    sha_position = {sha: p for p, sha in enumerate(images)}
    rows = session.execute(
        select(DatasetExample, StoredImage.sha256).join(StoredImage, StoredImage.id == DatasetExample.image_id)
        .join(Unit, Unit.id == DatasetExample.unit_id).where(Unit.layer_id == layer.id, DatasetExample.dataset_id == dataset)
    ).all()
    by_unit: dict = {}
    for example, sha in rows:
        by_unit.setdefault((example.unit_id, example.sign), []).append((example, sha))
    buckets = {uid for (uid,) in session.execute(
        select(BucketSample.unit_id).join(Unit, Unit.id == BucketSample.unit_id).where(Unit.layer_id == layer.id)).all()}
    for unit in units:
        assert unit.id in buckets
        assert unit.min <= unit.mean <= unit.max and unit.std >= 0 and 0 <= unit.fraction_active <= 1
        histogram = unit.histogram
        assert sum(histogram["counts"]) + histogram["underflow"] + histogram["overflow"] == len(images) == histogram["count"]
        assert len(histogram["edges"]) == PARAMS.hist_bins + 1 and histogram["dataset"] == dataset
        column = recomputed[:, unit.index]
        for sign in ("top", "bottom"):
            got = sorted(by_unit[(unit.id, sign)], key=lambda pair: pair[0].rank)
            assert [e.rank for e, _ in got] == list(range(PARAMS.k))
            values = [e.activation for e, _ in got]
            assert values == sorted(values, reverse=(sign == "top"))
            for example, sha in got:
                # The stored activation is the unit's value on that image (batches differ: float noise).
                assert example.activation == pytest.approx(float(column[sha_position[sha]]), rel=1e-3, abs=1e-5)
                if spec.spatial:
                    h, w = spec.spatial
                    assert 0 <= example.position < h * w and example.crop_uri is None
                    assert example.crop_box.endswith(",128")  # shown at the default crop size
                else:
                    assert example.position is None and example.crop_uri is None and example.crop_box is None
            extreme = column.max() if sign == "top" else column.min()
            assert got[0][0].activation == pytest.approx(float(extreme), rel=1e-3, abs=1e-5)
        assert unit.max == pytest.approx(float(column.max()), rel=1e-3, abs=1e-5)
        assert unit.min == pytest.approx(float(column.min()), rel=1e-3, abs=1e-5)


@pytest.mark.slow
def test_toy_models_on_the_synthetic_world(migrated_url, tmp_path, toys):
    register_synthetic(migrated_url, tmp_path, "world", 24)
    plans = {"toy-rn": ["layer4", "layer3", "attnpool"], "toy-vit": ["transformer.resblocks.5.mlp"]}
    for arch, layers in plans.items():
        register_random(migrated_url, arch, arch, toys[arch])
        summary = examples(migrated_url, tmp_path, toys[arch], "world", layers, shards=2)
        assert summary["status"] == "done" and summary["processed"] == 24 and summary["skipped"] == 0

    engine = make_engine(migrated_url)
    blobs = BlobStore(str(tmp_path / "blobs"))
    with make_sessionmaker(engine)() as session:
        from store import repository

        items = repository.dataset_items(session, "world")
        images = [sha for _, _, sha, _ in items]
        for arch, layers in plans.items():
            loaded = toys[arch]
            batch = torch.stack([loaded.preprocess(decode_image(blobs.get(uri))) for *_, uri in items])
            for layer in layers:
                _check_layer(session, blobs, loaded, "world", layer, images, reference_values(loaded.model, arch, layer, batch))
        jobs = session.scalars(select(Job)).all()
        assert len(jobs) == 4 * 3 and all(job.state == "done" and job.progress == 1.0 for job in jobs)
    engine.dispose()

    # A re-run finds everything done; a forced recomputation stores exactly the same rows.
    before = snapshot(migrated_url)
    assert examples(migrated_url, tmp_path, toys["toy-rn"], "world", plans["toy-rn"], shards=2)["status"] == "already done"
    examples(migrated_url, tmp_path, toys["toy-rn"], "world", ["layer4"], shards=2, restart=True)
    assert_same_store(before, snapshot(migrated_url))

    # Other options for planned layers need --restart; unknown names fail before any work.
    with pytest.raises(MicroscopeError, match="--restart"):
        examples(migrated_url, tmp_path, toys["toy-rn"], "world", ["layer4"], shards=3)
    with pytest.raises(UnknownLayerError, match="valid layers"):
        examples(migrated_url, tmp_path, toys["toy-rn"], "world", ["layer9"])
    with pytest.raises(MicroscopeError, match="dataset 'nope' is not registered"):
        examples(migrated_url, tmp_path, toys["toy-rn"], "nope", ["layer4"])


def test_corrupt_images_are_skipped_and_counted(migrated_url, tmp_path, toys):
    folder = write_world_folder(tmp_path / "images", 10)
    (folder / "0004b.png").write_bytes(b"\x89PNG\r\n\x1a\ncorrupt")  # in the middle: skipped at registration
    engine = make_engine(migrated_url)
    blobs = BlobStore(str(tmp_path / "blobs"))
    report = register_dataset(make_sessionmaker(engine), blobs, "folder", DatasetSource("folder", str(folder)))
    assert report.images == 10 and len(report.skipped) == 1
    # A blob that breaks after registration is skipped by the pass, and counted.
    with make_sessionmaker(engine)() as session:
        from store import repository

        uri = repository.dataset_items(session, "folder")[6][3]
    path = blobs.path_for(blobs.blob_name(uri))
    blobs.fs.pipe_file(path, blobs.fs.cat_file(path)[:100])
    engine.dispose()
    register_random(migrated_url, "toy-rn", "toy-rn", toys["toy-rn"])
    summary = examples(migrated_url, tmp_path, toys["toy-rn"], "folder", ["layer4"], batch_size=4)
    assert summary["processed"] == 10 and summary["skipped"] == 1
    engine = make_engine(migrated_url)
    with make_sessionmaker(engine)() as session:
        unit = session.scalar(select(Unit).join(Layer).where(Layer.model_id == "toy-rn", Layer.name == "layer4", Unit.index == 0))
        assert unit.histogram["count"] == 9
    engine.dispose()


def test_shard_results_do_not_depend_on_how_the_dataset_is_cut(tmp_path, toys):
    """With one image per batch the activations are the same bits however the dataset is
    sharded, so 1, 2 and 3 shards must store identical results (exact merges); only the
    float moments (mean, std) may differ in the last bits, being summed in another order."""
    loaded = toys["toy-vit"]
    stores = []
    for shards in (1, 2, 3):
        url = f"sqlite:///{tmp_path / f'db{shards}' / 'm.db'}"
        from store import migrations

        migrations.upgrade(url)
        folder = tmp_path / f"s{shards}"
        register_synthetic(url, folder, "world", 11)
        register_random(url, "toy-vit", "toy-vit", loaded)
        examples(url, folder, loaded, "world", ["transformer.resblocks.5.mlp", "transformer.resblocks.2"],
                 shards=shards, batch_size=1)
        stores.append(snapshot(url))
    assert_same_store(stores[0], stores[1], moments_rel=1e-12)
    assert_same_store(stores[0], stores[2], moments_rel=1e-12)
    assert len(stores[0]["dataset_examples"]) == 2 * PARAMS.k * (512 + 128)
    assert np.all([row[-1] is not None for row in stores[0]["dataset_examples"]])


@contextmanager
def counted_calls(*functions):
    """How often each of `functions` runs, in any thread, while the block runs (a profile hook
    that counts their 'call' events)."""
    codes = {function.__code__: function for function in functions}
    calls: list = []  # list.append is atomic: safe from every thread

    def hook(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            calls.append(codes[frame.f_code])

    threading.setprofile(hook)
    sys.setprofile(hook)
    counts: Counter = Counter()
    try:
        yield counts
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        counts.update(calls)


def _reference_crop(loaded, image: Image.Image, box, size: int = 128) -> np.ndarray:
    """The crop as the page shows it, computed here in torch: the model's input with the
    normalisation undone, the box cut out and resized."""
    cfg = loaded.preprocess_cfg
    mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=torch.float32).view(3, 1, 1)
    pixels = (loaded.preprocess(image) * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    view = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    return np.asarray(view.crop(box).resize((size, size), Image.Resampling.BICUBIC))


def _crop_rows(session, model_id: str, layer: str) -> list[tuple[int, int, int, str | None, str | None]]:
    """(unit index, image id, grid position, crop URI, crop box) of every example of a layer."""
    return session.execute(
        select(Unit.index, DatasetExample.image_id, DatasetExample.position, DatasetExample.crop_uri, DatasetExample.crop_box)
        .join(Unit, Unit.id == DatasetExample.unit_id).join(Layer, Layer.id == Unit.layer_id)
        .where(Layer.model_id == model_id, Layer.name == layer)
    ).all()


def test_examples_record_crop_boxes_and_the_server_cuts_the_crops(migrated_url, tmp_path, toys):
    """The write phase stores no crops: each example records the box around its maximum, and
    the web server cuts the crop from the stored image when the page asks, showing the pixels
    the model saw there (a reference computed here in torch)."""
    from fastapi.testclient import TestClient

    from app.server import create_app
    from app.settings import Settings

    register_synthetic(migrated_url, tmp_path, "world", 24)
    blobs = BlobStore(str(tmp_path / "blobs"))
    def images_stored() -> set[str]:
        return {path for path in blobs.fs.find(blobs.root) if path.endswith(".png")}

    stored_before = images_stored()
    engine = make_engine(migrated_url)
    settings = Settings(database_url=migrated_url, blob_url=str(tmp_path / "blobs"), data_dir=tmp_path / "data", device="cpu")
    try:
        for arch, layer in (("toy-rn", "layer4"), ("toy-vit", "transformer.resblocks.5.mlp")):
            loaded = toys[arch]
            spec = loaded.spec.layer(layer)
            size = loaded.spec.image_size
            register_random(migrated_url, arch, arch, loaded)
            with counted_calls(png_bytes, model_view) as calls:
                summary = examples(migrated_url, tmp_path, loaded, "world", [layer], shards=2, crop_size=96)
            assert calls[png_bytes] == calls[model_view] == 0
            assert summary["units_written"] == spec.units and summary["write_units_per_second"] > 0
            assert images_stored() == stored_before  # no crop blobs
            with make_sessionmaker(engine)() as session:
                rows = _crop_rows(session, arch, layer)
            assert len(rows) == spec.units * 2 * PARAMS.k
            h, w = spec.spatial
            sides = set()
            for _, _, position, crop_uri, text in rows:
                assert crop_uri is None
                left, top, right, bottom, side = (int(v) for v in text.split(","))
                row, col = divmod(position, w)
                # The box holds the maximum's grid cell, inside the input, and is shown at --crop-size.
                assert 0 <= left <= col * size / w and (col + 1) * size / w <= right <= size
                assert 0 <= top <= row * size / h and (row + 1) * size / h <= bottom <= size
                assert side == 96
                sides.add((right - left, bottom - top))
            assert len(sides) == 1  # every crop of a layer has the same size

            with TestClient(create_app(settings)) as client:
                for index in (0, spec.units - 1):
                    twin = client.get(f"/api/v1/models/{arch}/{layer}/{index}").json()
                    shown = [e for group in twin["examples"] for sign in ("top", "bottom") for e in group[sign]]
                    assert len(shown) == 2 * PARAMS.k and all(e["crop_url"] for e in shown)
                    for example in shown[:: PARAMS.k - 1]:
                        served = client.get(example["crop_url"])
                        assert served.status_code == 200 and served.headers["content-type"] == "image/png"
                        assert "immutable" in served.headers["cache-control"]
                        image = decode_image(client.get(example["image_url"]).content)
                        cell = cell_box(spec, size, example["position"])
                        np.testing.assert_array_equal(np.asarray(decode_image(served.content)),
                                                      _reference_crop(loaded, image, cell, 96))
    finally:
        engine.dispose()
