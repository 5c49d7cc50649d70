"""`--engine ray` against a real local Ray instance: the same shards as Ray tasks, the same
stored results as the local engine, bit for bit."""

from __future__ import annotations

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
from workers.examples_job import ExamplesRequest, run_examples

pytest.importorskip("ray")


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
