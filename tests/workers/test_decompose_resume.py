"""Kill `microscope precompute decompose` with SIGKILL mid-pass, re-run it, and compare its
decompositions with an uninterrupted run's in another database: identical, row for row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from precompute.registry import load_embedded
from store import migrations
from store.blobs import BlobStore
from store.directions import LayerDirections, save_layer_directions
from store.models import Decomposition, Job, Layer, Unit
from store.repository import get_layer
from store.session import make_engine, make_sessionmaker
from tests.text_side import LAYER, MODEL, POOL, prepare_planted_store
from tests.workers.precompute_helpers import single_thread, store_config
from tests.workers.test_sigkill import _run, kill_mid_pass
from workers.decompose_job import DecomposeRequest, run_decompose

DECOMPOSE = ["precompute", "decompose", "--model", MODEL, "--layer", LAYER, "--pool", POOL, "--terms", "12",
             "--units-per-batch", "1", "--quiet"]
UNITS = 160


def _prepare(url: str, folder: Path, loaded) -> None:
    migrations.upgrade(url)
    prepare_planted_store(url, folder, loaded)
    rng = np.random.default_rng(7)  # then every unit of the layer gets a direction: UNITS items
    directions = rng.normal(size=(UNITS, loaded.model.text_projection.shape[1])).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        save_layer_directions(session, BlobStore(str(folder / "blobs")), get_layer(session, MODEL, LAYER).id,
                              LayerDirections(np.arange(UNITS), directions, np.zeros_like(directions),
                                              np.ones(UNITS, dtype=np.float32), "second-order+direct", "world", 2))
        session.commit()
    engine.dispose()


def _decompositions(url: str) -> list[tuple]:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            rows = session.execute(
                select(Unit.index, Decomposition.pool_id, Decomposition.rank, Decomposition.text, Decomposition.coefficient,
                       Decomposition.score)
                .join(Unit, Unit.id == Decomposition.unit_id).join(Layer, Layer.id == Unit.layer_id)
                .where(Layer.name == LAYER)
            ).all()
            states = session.execute(select(Job.state).where(Job.kind == "decompose")).scalars().all()
        return sorted(tuple(r) for r in rows), states
    finally:
        engine.dispose()


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path):
    # SQLite only: the loop's transactions are tested on Postgres by the examples and words jobs
    # (tests/workers/test_sigkill.py); this checks what the decompose job adds, at a third of the cost.
    loaded = load_embedded(MODEL)
    clean_folder = tmp_path / "clean"
    clean_url = f"sqlite:///{clean_folder / 'm.db'}"
    clean_folder.mkdir()
    _prepare(clean_url, clean_folder, loaded)
    for _ in single_thread():  # in this process (one torch import fewer), on one thread as the command runs
        run_decompose(store_config(clean_url, clean_folder),
                      DecomposeRequest(model_id=MODEL, layer=LAYER, pool_id=POOL, terms=12, units_per_batch=1),
                      show_progress=False, loaded=loaded)
    clean, clean_states = _decompositions(clean_url)
    assert len(clean) == UNITS * 12 and clean_states == ["done"]

    database_url, env, outcomes, partial = kill_mid_pass(
        DECOMPOSE, "decompose", tmp_path, lambda url, folder: _prepare(url, folder, loaded),
        lambda url: _decompositions(url)[0], len(clean))
    print("kill outcomes:", outcomes)
    _run(DECOMPOSE, env)
    resumed, states = _decompositions(database_url)
    assert states == ["done"]
    assert any(o.startswith("killed") for o in outcomes) and len(partial) < len(clean), outcomes
    assert resumed == clean
