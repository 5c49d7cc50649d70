"""A store holding what the shipped toy models read: both embedded models registered and the
words job run on their final layers with the synthetic world's vocabulary (with the
`microscope` command, as a user runs it) and with a short common-English list.

The words ranking needs no dataset, so nothing else is computed. The common-English list gets
the id `common-english`, which sorts before the world list's id: pages must put the world list
first for the toy models because of what the lists are, not because of their names.

`COLOUR_UNITS` comes from precompute/toy/checkpoints/figures.json, the record `microscope toy
eval` wrote of the checkpoints, not from the code the tests check.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "precompute" / "toy" / "checkpoints" / "figures.json"
FINAL_LAYERS = {"toy-rn": "layer4", "toy-vit": "transformer.resblocks.5.mlp"}
WORLD_LIST = "synthetic-world-vocabulary.dejavusans-bold.auto.64px"
ENGLISH_LIST = "common-english"
ENGLISH_WORDS = 300


def colour_units() -> dict[str, dict[str, int]]:
    """{model: {colour: unit}} for every colour unit figures.json records as meeting the bar."""
    figures = json.loads(FIGURES.read_text())
    return {
        model: {colour: entry["unit"] for colour, entry in figures[model]["multimodal_units"].items() if entry["meets_bar"]}
        for model in FINAL_LAYERS
    }


def cli_env(database_url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    env.update(MICROSCOPE_DATA_DIR=str(data_dir), MICROSCOPE_DATABASE_URL=database_url,
               MICROSCOPE_BLOB_URL=str(data_dir / "blobs"), MICROSCOPE_DEVICE="cpu", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def microscope(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=900)


def _ok(env: dict[str, str], *args: str) -> str:
    result = microscope(env, *args)
    assert result.returncode == 0, f"microscope {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    return result.stdout


@functools.cache
def embedded(model: str):
    from precompute.registry import load_embedded

    return load_embedded(model, device="cpu")


@functools.cache
def _built_sqlite_store() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="world-words-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    build_world_words_store(f"sqlite:///{folder / 'microscope.db'}", folder)
    return folder


def sqlite_world_words_store(data_dir: Path) -> str:
    """A SQLite store as `build_world_words_store` fills one, in `data_dir`, and its URL. It is a
    copy of one built once per test run (the build runs the words job on both models), so each
    reader has its own to change; the store names its blobs relative to the blob folder."""
    shutil.copytree(_built_sqlite_store(), data_dir, dirs_exist_ok=True)
    return f"sqlite:///{data_dir / 'microscope.db'}"


def build_world_words_store(database_url: str, data_dir: Path) -> None:
    """Fill an empty database: the world list through the `microscope` command, the rest in
    this process (the same functions the command calls), which spares loading torch again."""
    from precompute.words import common_words, common_words_source
    from store import migrations
    from store.loading import register
    from store.session import make_engine, make_sessionmaker
    from workers.engines import StoreConfig
    from workers.words_job import WordsRequest, run_words

    migrations.upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            for model in FINAL_LAYERS:
                register(session, embedded(model))
    finally:
        engine.dispose()
    env = cli_env(database_url, data_dir)
    store = StoreConfig(database_url, str(data_dir / "blobs"))
    english = tuple(common_words(ENGLISH_WORDS))
    for model, layer in FINAL_LAYERS.items():
        _ok(env, "precompute", "words", "--model", model, "--layer", layer, "--world-vocabulary", "--quiet")
        request = WordsRequest(model_id=model, layers=(layer,), words=english, source=common_words_source(ENGLISH_WORDS),
                               list_id=ENGLISH_LIST)
        assert run_words(store, request, show_progress=False, loaded=embedded(model))["status"] == "done"
