"""`microscope precompute maxtext` on toy-vit's last MLP layer with planted directions (the
centred text embeddings of known words plus noise, tests.text_side): the job's rows against
the climb run directly on the same directions, shards against one pass, re-runs that change
nothing, refusals before any work, and a SIGKILL mid-pass whose re-run ends with the rows of
an uninterrupted run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from precompute.discovery import maximal_texts
from precompute.errors import MicroscopeError
from precompute.registry import load_embedded
from store import migrations
from store.models import Job, MaximalText
from store.session import make_engine, make_sessionmaker
from tests.text_side import LAYER, MODEL, PLANTED, SILENT, planted_directions, prepare_planted_store
from tests.workers.precompute_helpers import single_thread, store_config
from tests.workers.test_sigkill import _env, _run, kill_mid_pass
from workers.maxtext_job import MaxTextRequest, maxtext_layers, run_maxtext

QUICK = {"length": 2, "steps": 6, "candidates": 8}


@pytest.fixture(scope="module")
def toy_vit():
    return load_embedded(MODEL)


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


def _rows(url: str) -> dict[int, tuple]:
    from store.maximal_texts import layer_maximal_texts

    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            found = layer_maximal_texts(session, MODEL, LAYER)
        return {unit: (row["text"], tuple(row["tokens"]), round(row["score"], 6), row["start_text"],
                       round(row["start_score"], 6), row["steps"], row["dataset_id"], row["parameters"])
                for unit, row in found.items()}
    finally:
        engine.dispose()


def _assert_same_texts(got: dict[int, tuple], expected: dict[int, tuple]) -> None:
    """The same texts, tokens, starts and steps; the scores to float rounding, which differs in
    the last bits when the units are batched differently (other matrix shapes)."""
    assert sorted(got) == sorted(expected)
    for unit, row in expected.items():
        other = got[unit]
        assert other[:2] + other[3:4] + other[5:] == row[:2] + row[3:4] + row[5:], unit
        assert other[2] == pytest.approx(row[2], abs=1e-5) and other[4] == pytest.approx(row[4], abs=1e-5), unit


def _jobs(url: str) -> list[tuple[int, str, int]]:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            return [tuple(r) for r in session.execute(select(Job.shard, Job.state, Job.cursor)
                                                      .where(Job.kind == "maxtext").order_by(Job.shard))]
    finally:
        engine.dispose()


def test_rows_are_the_climb_on_the_stored_directions(migrated_url, tmp_path, toy_vit):
    prepare_planted_store(migrated_url, tmp_path, toy_vit)
    store = store_config(migrated_url, tmp_path)
    summary = run_maxtext(store, MaxTextRequest(MODEL, LAYER, units_per_batch=4, **QUICK), show_progress=False, loaded=toy_vit)
    assert summary["status"] == "done" and summary["units"] == len(PLANTED) and summary["texts_written"] == len(PLANTED) - 1
    rows = _rows(migrated_url)
    assert sorted(rows) == sorted(u for u in PLANTED if u != SILENT)  # a zero direction has nothing to maximise
    units = list(PLANTED)
    directions = planted_directions(toy_vit)
    for unit, result in zip(units, maximal_texts(toy_vit, directions, **QUICK)):
        if unit == SILENT:
            continue
        text, tokens, score, start_text, start_score, steps, dataset, parameters = rows[unit]
        assert (text, tokens, start_text, steps) == (result.text, result.tokens, result.start_text, result.steps)
        assert score == pytest.approx(result.score, abs=1e-5) and start_score == pytest.approx(result.start_score, abs=1e-5)
        assert dataset == "world" and parameters == {**QUICK, "starts": 4}
    # Planted on "red" plus noise: the red unit's best word is red, and its text keeps it.
    assert rows[3][3] == "red" and "red" in rows[3][0].split()

    again = run_maxtext(store, MaxTextRequest(MODEL, LAYER, units_per_batch=4, **QUICK), show_progress=False, loaded=toy_vit)
    assert again["status"] == "already done" and _rows(migrated_url) == rows
    restarted = run_maxtext(store, MaxTextRequest(MODEL, LAYER, units_per_batch=4, restart=True, **QUICK),
                            show_progress=False, loaded=toy_vit)
    assert restarted["status"] == "done" and _rows(migrated_url) == rows
    # Shards: the same rows, one job row per shard; then back to one shard.
    run_maxtext(store, MaxTextRequest(MODEL, LAYER, units_per_batch=2, shards=3, **QUICK), show_progress=False, loaded=toy_vit)
    _assert_same_texts(_rows(migrated_url), rows)
    assert _jobs(migrated_url) == [(0, "done", 5), (1, "done", 5), (2, "done", 6)]
    run_maxtext(store, MaxTextRequest(MODEL, LAYER, units_per_batch=4, **QUICK), show_progress=False, loaded=toy_vit)
    _assert_same_texts(_rows(migrated_url), rows)
    assert _jobs(migrated_url) == [(0, "done", len(PLANTED))]


def test_bad_requests_are_refused_before_any_work(migrated_url, tmp_path, toy_vit):
    prepare_planted_store(migrated_url, tmp_path, toy_vit)
    store = store_config(migrated_url, tmp_path)
    for request, message in ((MaxTextRequest(MODEL, "transformer.resblocks.2.mlp"), "has no neuron directions"),
                             (MaxTextRequest(MODEL, LAYER, dataset_id="elsewhere"), "over dataset 'elsewhere'"),
                             (MaxTextRequest("nobody", LAYER), "not registered"),
                             (MaxTextRequest(MODEL, "transformer.resblocks.99.mlp"), "resblocks.99"),
                             (MaxTextRequest(MODEL, LAYER, length=0), "--length"),
                             (MaxTextRequest(MODEL, LAYER, steps=0), "--steps"),
                             (MaxTextRequest(MODEL, LAYER, engine="spark"), "--engine")):
        with pytest.raises(MicroscopeError, match=message):
            run_maxtext(store, request, show_progress=False, loaded=toy_vit)
    assert _rows(migrated_url) == {} and _jobs(migrated_url) == []


def test_the_demo_step_says_which_layers_have_no_directions(migrated_url, tmp_path, toy_vit):
    prepare_planted_store(migrated_url, tmp_path, toy_vit)
    lines = list(maxtext_layers(store_config(migrated_url, tmp_path), {MODEL: [LAYER, "transformer.resblocks.1.mlp"]},
                                loaded={MODEL: toy_vit}, limit=3, steps=2, show_progress=False))
    assert lines[0].startswith(f"{MODEL} {LAYER}: maximal texts of 3 units") and "done" in lines[0]
    assert "no maximal texts" in lines[1] and "precompute directions" in lines[1]
    assert sorted(_rows(migrated_url)) == list(PLANTED)[:3]


def test_the_command_fails_clearly_without_directions(tmp_path, toy_vit):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrations.upgrade(url)
    prepare_planted_store(url, tmp_path, toy_vit)
    result = subprocess.run([sys.executable, "-m", "cli.main", "precompute", "maxtext", MODEL, "transformer.resblocks.0.mlp",
                             "--quiet"], env=_env(url, tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "no neuron directions" in result.stderr and "microscope precompute directions" in result.stderr


UNITS = 40
MAXTEXT = ["precompute", "maxtext", MODEL, LAYER, "--units-per-batch", "1", "--length", "2", "--steps", "6",
           "--candidates", "8", "--quiet"]


def _prepare_random(url: str, folder: Path, loaded) -> None:
    """The planted store, then every one of the layer's first UNITS units a random direction."""
    from store.blobs import BlobStore
    from store.directions import LayerDirections, save_layer_directions
    from store.repository import get_layer

    migrations.upgrade(url)
    prepare_planted_store(url, folder, loaded)
    directions = np.random.default_rng(5).normal(size=(UNITS, 128)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        save_layer_directions(session, BlobStore(str(folder / "blobs")), get_layer(session, MODEL, LAYER).id,
                              LayerDirections(np.arange(UNITS), directions, np.zeros_like(directions),
                                              np.ones(UNITS, dtype=np.float32), "second-order+direct", "world", 2))
        session.commit()
    engine.dispose()


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path, toy_vit):
    clean_folder = tmp_path / "clean"
    clean_folder.mkdir()
    clean_url = f"sqlite:///{clean_folder / 'm.db'}"
    _prepare_random(clean_url, clean_folder, toy_vit)
    run_maxtext(store_config(clean_url, clean_folder),
                MaxTextRequest(MODEL, LAYER, units_per_batch=1, **QUICK), show_progress=False, loaded=toy_vit)
    clean = _rows(clean_url)
    assert len(clean) == UNITS

    url, env, outcomes, partial = kill_mid_pass(
        MAXTEXT, "maxtext", tmp_path, lambda url, folder: _prepare_random(url, folder, toy_vit), _rows, UNITS)
    outcome = outcomes[-1]
    _run(MAXTEXT, env)
    assert _jobs(url) == [(0, "done", UNITS)]
    assert outcome.startswith("killed") and len(partial) < UNITS, outcome
    assert _rows(url) == clean


def test_maximal_text_rows_go_with_their_unit(migrated_url, tmp_path, toy_vit):
    """Deleting a model deletes its units' maximal texts (the foreign keys cascade)."""
    from store.models import Model

    prepare_planted_store(migrated_url, tmp_path, toy_vit)
    run_maxtext(store_config(migrated_url, tmp_path), MaxTextRequest(MODEL, LAYER, limit=2, steps=1, **{"length": 2}),
                show_progress=False, loaded=toy_vit)
    engine = make_engine(migrated_url)
    try:
        with make_sessionmaker(engine)() as session:
            assert len(session.scalars(select(MaximalText)).all()) == 2
            session.delete(session.get(Model, MODEL))
            session.commit()
            assert session.scalars(select(MaximalText)).all() == []
    finally:
        engine.dispose()
