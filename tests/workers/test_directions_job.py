"""The directions job end to end on the toy models and the synthetic world, on SQLite and
Postgres: the stored blob against the authors' whole-matrix recipe on effects computed image by
image; re-runs, plan changes and --restart; bad input as one line; a SIGKILL mid-run; Ray."""

from __future__ import annotations

import importlib.util
import io
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import select

from store import migrations, repository
from store.blobs import BlobStore
from store.directions import load_layer_directions
from store.models import DirectionSet, Job
from store.session import make_engine, make_sessionmaker
from precompute.errors import MicroscopeError, UnknownLayerError
from precompute.images import decode_image
from precompute.lens import neuron_effects
from tests.precompute.test_directions import _authors
from tests.workers.precompute_helpers import register_random, register_synthetic, single_thread, store_config
from tests.workers.test_cli_precompute import microscope, one_line_error
from workers.directions_job import DirectionsRequest, run_directions

VIT_LAYERS = ("transformer.resblocks.4.mlp", "transformer.resblocks.5.mlp")


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def toys():
    from precompute.registry import load_model

    return {arch: load_model(arch, arch) for arch in ("toy-rn", "toy-vit")}


def _prepare(url, folder, toys, count=24):
    migrations.upgrade(url)
    for loaded in toys.values():
        register_random(url, loaded.model_id, loaded.spec.name, loaded)
    register_synthetic(url, folder, "world", count)


def _run(url, folder, loaded, layers, **options):
    request = DirectionsRequest(model_id=loaded.model_id, dataset_id="world", layers=tuple(layers),
                                batch_size=options.pop("batch_size", 5), **options)
    return run_directions(store_config(url, folder), request, show_progress=False, loaded=loaded)


def _stored(url, folder, model_id, layer):
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            layer_row = repository.get_layer(session, model_id, layer)
            value = load_layer_directions(session, BlobStore(str(folder / "blobs")), layer_row.id, "world")
            row = session.scalar(select(DirectionSet).where(DirectionSet.layer_id == layer_row.id))
            return value, row.blob_uri
    finally:
        engine.dispose()


def _dataset_images(url, folder, loaded):
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            items = repository.dataset_items(session, "world")
    finally:
        engine.dispose()
    blobs = BlobStore(str(folder / "blobs"))
    return torch.stack([loaded.preprocess(decode_image(blobs.get(item[3]))) for item in items])


def test_stored_directions_follow_the_authors_recipe(database_url, tmp_path, toys):
    _prepare(database_url, tmp_path, toys)
    loaded = toys["toy-vit"]
    summary = _run(database_url, tmp_path, loaded, VIT_LAYERS, top=6, shards=2)
    assert summary["status"] == "done" and summary["layers_written"] == list(VIT_LAYERS), summary
    images = _dataset_images(database_url, tmp_path, loaded)
    for layer, paths in zip(VIT_LAYERS, ("second-order+direct", "direct")):
        value, _ = _stored(database_url, tmp_path, loaded.model_id, layer)
        assert value.paths == paths and value.image_count == 24 and value.dataset_id == "world"
        # the effects image by image, and the recipe on the whole [images, neurons, d] array
        effects = torch.cat([neuron_effects(loaded, images[i:i + 1], layer).values for i in range(len(images))]).numpy()
        ties: list = []
        mean, r, thresholds = _authors(effects.astype(np.float64), 6, ties)
        np.testing.assert_array_equal(value.units, np.arange(512))
        np.testing.assert_allclose(value.mean_effects, mean, rtol=1e-4, atol=1e-5 * np.abs(mean).max())
        np.testing.assert_allclose(value.thresholds, thresholds, rtol=1e-4)
        agree = (value.directions * r).sum(axis=1)
        ties = np.array(ties)
        assert 0 < (~ties).sum() and (np.abs(agree) > 0.999).mean() > 0.99, np.sort(np.abs(agree))[:10]
        assert (agree[~ties] > 0.999).mean() > 0.99  # and the sign the majority of the kept images gives


def test_reruns_plan_changes_and_restart(tmp_path, toys):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    _prepare(url, tmp_path, toys, count=12)
    loaded = toys["toy-rn"]
    assert _run(url, tmp_path, loaded, ["layer4"], top=4)["status"] == "done"
    value, blob = _stored(url, tmp_path, "toy-rn", "layer4")
    assert value.paths == "attention-pool" and value.directions.shape == (768, 128)
    assert _run(url, tmp_path, loaded, ["layer4"], top=4)["status"] == "already done"
    with pytest.raises(MicroscopeError, match="planned with other top"):
        _run(url, tmp_path, loaded, ["layer4"], top=5)
    assert _run(url, tmp_path, loaded, ["layer4"], top=4, restart=True)["status"] == "done"
    assert _stored(url, tmp_path, "toy-rn", "layer4")[1] == blob  # the same bytes again
    # only the first pass's final states (the plan) are left behind
    states = sorted(os.listdir(tmp_path / "blobs" / "job-state"))
    assert len(states) == 1 and states[0].startswith("directions-mean-"), states


def test_bad_input_is_refused_before_any_work(tmp_path, toys):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    _prepare(url, tmp_path, toys, count=3)
    rn = toys["toy-rn"]
    with pytest.raises(MicroscopeError, match="cannot serve layer 'layer3'"):
        _run(url, tmp_path, rn, ["layer3"])
    with pytest.raises(UnknownLayerError):
        _run(url, tmp_path, rn, ["layer9"])
    with pytest.raises(MicroscopeError, match="--top must be at least 1"):
        _run(url, tmp_path, rn, ["layer4"], top=0)
    with pytest.raises(MicroscopeError, match="not registered"):
        run_directions(store_config(url, tmp_path), DirectionsRequest("toy-rn", "nope", ("layer4",)), show_progress=False)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        assert session.scalar(select(Job.id).limit(1)) is None
    engine.dispose()


@pytest.mark.slow
def test_cli_gives_one_line_errors(tmp_path):
    from tests.workers.test_cli_precompute import ROOT
    from tests.workers.precompute_helpers import SINGLE_THREAD_ENV

    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    env.update(MICROSCOPE_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(ROOT), **SINGLE_THREAD_ENV)
    url = f"sqlite:///{tmp_path / 'data' / 'microscope.db'}"
    (tmp_path / "data").mkdir()
    migrations.upgrade(url)
    register_random(url, "toy-vit", "toy-vit")
    # The dataset is registered in this process: `microscope datasets register` has its own tests.
    register_synthetic(url, tmp_path / "data", "world", 3)
    base = ["precompute", "directions", "--model", "toy-vit", "--dataset", "world"]
    assert "cannot serve layer 'transformer.resblocks.2'" in one_line_error(
        microscope(*base, "--layer", "transformer.resblocks.2", env=env))
    assert "--top must be at least 1" in one_line_error(
        microscope(*base, "--layer", "transformer.resblocks.2.mlp", "--top", "0", env=env))
    ok = microscope(*base, "--layer", "transformer.resblocks.2.mlp", "--quiet", env=env)
    assert ok.returncode == 0 and '"status": "done"' in ok.stdout, ok.stderr


@pytest.mark.slow
def test_sigkill_then_rerun_writes_the_blob_of_an_uninterrupted_run(tmp_path):
    from tests.workers import test_sigkill as kill

    args = ["precompute", "directions", "--model", "toy-rn", "--layer", "layer4", "--dataset", "world", "--top", "8",
            "--batch-size", "4", "--shards", "2", "--checkpoint-every", "1", "--quiet"]
    blobs = {}
    for name, kills in (("clean", 0), ("killed", 2)):
        folder = tmp_path / name
        folder.mkdir()
        url = f"sqlite:///{folder / 'm.db'}"
        kill._prepare(url, folder)  # random toy-rn and 120 world images
        env = kill._env(url, folder)
        outcomes = [kill._kill_at_random(args, env, url, "directions-mean" if i == 0 else "directions-top", random.Random(i))
                    for i in range(kills)]
        kill._run(args, env)
        print(name, outcomes)
        if kills:
            assert any(o.startswith("killed") for o in outcomes), outcomes
        engine = make_engine(url)
        with make_sessionmaker(engine)() as session:
            row = session.scalar(select(DirectionSet))
            blobs[name] = BlobStore(str(folder / "blobs")).get(row.blob_uri)
        engine.dispose()
    assert blobs["killed"] == blobs["clean"]


@pytest.mark.slow
def test_ray_engine_stores_the_blob_of_the_local_engine(tmp_path, toys):
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("CI"):
            pytest.fail("the ray package is not installed (CI is set: the Ray tests must run there)")
        pytest.skip("the ray package is not installed")
    import ray

    from workers.engines import start_ray

    started = start_ray(None, num_cpus=2)
    try:
        blobs = {}
        for engine_name in ("local", "ray"):
            folder = tmp_path / engine_name
            folder.mkdir()
            url = f"sqlite:///{folder / 'm.db'}"
            _prepare(url, folder, toys, count=16)
            _run(url, folder, toys["toy-rn"], ["layer4"], top=5, shards=2, engine=engine_name)
            value, blob = _stored(url, folder, "toy-rn", "layer4")
            blobs[engine_name] = BlobStore(str(folder / "blobs")).get(blob)
        assert blobs["ray"] == blobs["local"]
    finally:
        if started:
            ray.shutdown()
