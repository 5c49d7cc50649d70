"""`microscope precompute featureviz` and `microscope featureviz train-facet` as a user runs
them: one-line errors for bad input, and a SIGKILL mid-run then a re-run that ends with the
store of an uninterrupted run."""

from __future__ import annotations

import json
import random

import pytest
from sqlalchemy import select

from store import migrations
from store.models import FeatureViz, Layer, Unit
from store.session import make_engine, make_sessionmaker
from tests.workers.precompute_helpers import register_random
from tests.workers.test_cli_precompute import cli_env, microscope, one_line_error  # noqa: F401 (fixture)
from tests.workers.test_sigkill import _env, _kill_at_random, _run

RENDER = ["precompute", "featureviz", "--model", "toy-rn", "--layer", "layer4", "--units", "0-9", "--kinds", "channel,neuron",
          "--steps", "5", "--batch-size", "4", "--quiet"]


def test_help(cli_env):  # noqa: F811
    for command in (["precompute", "featureviz"], ["featureviz"], ["featureviz", "train-facet"]):
        result = microscope(*command, "--help", env=cli_env)
        assert result.returncode == 0 and "Usage" in result.stdout, result.stderr


@pytest.mark.slow
def test_bad_input_gives_one_line_and_exit_2(cli_env, tmp_path):  # noqa: F811
    url = f"sqlite:///{tmp_path / 'data' / 'microscope.db'}"
    migrations.upgrade(url)
    register_random(url, "toy-rn", "toy-rn")
    base = ["precompute", "featureviz", "--model", "toy-rn"]
    assert "no unit 768" in one_line_error(microscope(*base, "--layer", "layer4", "--units", "0,768", env=cli_env))
    assert "no layer 'layer9'" in one_line_error(microscope(*base, "--layer", "layer9", env=cli_env))
    assert "no positions" in one_line_error(microscope(*base, "--layer", "attnpool", "--kinds", "neuron", env=cli_env))
    assert "--steps must be at least 1" in one_line_error(microscope(*base, "--layer", "layer4", "--steps", "0", env=cli_env))
    assert "--facet-filter must be one of positive, signed" in one_line_error(
        microscope(*base, "--layer", "layer4", "--facet-filter", "absolute", env=cli_env))
    assert "no facet probe 'text'" in one_line_error(
        microscope(*base, "--layer", "layer4", "--kinds", "facet", "--facets", "text", env=cli_env))
    trained = microscope("featureviz", "train-facet", "--model", "toy-rn", "--facet", "text", "--world", "--count", "12",
                         env=cli_env)
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout)["layer"] == "layer3"
    assert "trained on layer3, not on layer2" in one_line_error(microscope(
        *base, "--layer", "layer4", "--kinds", "facet", "--facets", "text", "--facet-layer", "layer2", env=cli_env))
    assert "no built-in facet 'face'" in one_line_error(
        microscope("featureviz", "train-facet", "--model", "toy-rn", "--facet", "face", "--world", env=cli_env))
    assert "--images and --generic" in one_line_error(
        microscope("featureviz", "train-facet", "--model", "toy-rn", "--facet", "logo", env=cli_env))


def _featureviz_rows(url: str) -> list[tuple]:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            stmt = (select(Layer.model_id, Layer.name, Unit.index, FeatureViz.kind, FeatureViz.variant, FeatureViz.blob_uri,
                           FeatureViz.thumbnail_uri, FeatureViz.final_activation, FeatureViz.parameters)
                    .join(Unit, Unit.id == FeatureViz.unit_id).join(Layer, Layer.id == Unit.layer_id))
            return sorted((*r[:8], json.dumps(r[8], sort_keys=True)) for r in session.execute(stmt).all())
    finally:
        engine.dispose()


def _prepare(url: str) -> None:
    migrations.upgrade(url)
    register_random(url, "toy-rn", "toy-rn")


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_uninterrupted_run(database_url, tmp_path):
    clean_folder = tmp_path / "clean"
    clean_url = f"sqlite:///{clean_folder / 'm.db'}"
    clean_folder.mkdir()
    _prepare(clean_url)
    _run(RENDER, _env(clean_url, clean_folder))
    clean = _featureviz_rows(clean_url)
    assert len(clean) == 20

    _prepare(database_url)
    env = _env(database_url, tmp_path)
    outcome = _kill_at_random(RENDER, env, database_url, "featureviz", random.Random())
    print("kill outcome:", outcome)
    _run(RENDER, env)
    assert _featureviz_rows(database_url) == clean
    again = _run(RENDER, env)
    assert json.loads(again.stdout.strip().splitlines()[-1])["status"] == "already done"
