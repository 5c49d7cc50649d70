"""`--engine ray` against a real local Ray instance: the same shards as Ray tasks, the same
stored results as the local engine, bit for bit. Without Ray these tests skip on a
developer's machine and fail under CI (env var `CI` set), where a skip would hide them."""

from __future__ import annotations

import importlib.util
import os

import pytest

from store import migrations
from precompute.examples import ExampleParams
from tests.workers.precompute_helpers import (
    assert_same_store,
    register_random,
    register_synthetic,
    single_thread,
    snapshot,
    store_config,
)
from precompute.words import common_words
from workers.examples_job import ExamplesRequest, run_examples
from workers.words_job import WordsRequest, run_words


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    """One local Ray for the module (the jobs reuse a running instance and leave it running)."""
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("CI"):
            pytest.fail("the ray package is not installed (CI is set: the Ray tests must run there)")
        pytest.skip("the ray package is not installed")
    import ray

    from workers.engines import start_ray

    started = start_ray(None, num_cpus=2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.mark.slow
def test_local_and_ray_engines_store_identical_results(database_url, tmp_path):
    local_url = f"sqlite:///{tmp_path / 'local' / 'm.db'}"
    loaded = None
    for url, folder in ((local_url, tmp_path / "local"), (database_url, tmp_path / "ray")):
        migrations.upgrade(url)
        loaded = register_random(url, "toy-rn", "toy-rn", loaded)
        register_synthetic(url, folder, "world", 40)

    def request(engine: str) -> ExamplesRequest:
        return ExamplesRequest(model_id="toy-rn", dataset_id="world", layers=("layer4", "attnpool"), shards=3,
                               batch_size=8, engine=engine, params=ExampleParams(k=6, buckets=5, per_bucket=2))

    local = run_examples(store_config(local_url, tmp_path / "local"), request("local"), show_progress=False, loaded=loaded)
    remote = run_examples(store_config(database_url, tmp_path / "ray"), request("ray"), show_progress=False, loaded=loaded)
    assert local["processed"] == remote["processed"] == 40 and remote["engine"] == "ray"
    a, b = snapshot(local_url), snapshot(database_url)
    assert len(a["dataset_examples"]) == (768 + 128) * 2 * 6
    assert_same_store(a, b)


@pytest.mark.slow
def test_words_on_ray_store_the_rows_of_the_local_engine(database_url, tmp_path):
    local_url = f"sqlite:///{tmp_path / 'local' / 'm.db'}"
    loaded = None
    for url in (local_url, database_url):
        migrations.upgrade(url)
        loaded = register_random(url, "toy-rn", "toy-rn", loaded)
    words = tuple(common_words(30))

    def request(engine: str) -> WordsRequest:
        return WordsRequest(model_id="toy-rn", layers=("layer4", "attnpool"), words=words, source="wordfreq:en:30",
                            batch_size=8, checkpoint_every=1, top=5, engine=engine)

    local = run_words(store_config(local_url, tmp_path / "local"), request("local"), show_progress=False, loaded=loaded)
    remote = run_words(store_config(database_url, tmp_path / "ray"), request("ray"), show_progress=False, loaded=loaded)
    assert local["status"] == remote["status"] == "done" and remote["engine"] == "ray"
    a, b = snapshot(local_url), snapshot(database_url)
    assert len(a["word_activations"]) == (768 + 128) * 5 and len(a["word_embeddings"]) == 2
    assert_same_store(a, b)
