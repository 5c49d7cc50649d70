"""Kill `microscope precompute` with SIGKILL at a random moment, re-run it, and compare the
store with an uninterrupted run in another database: it must be identical, row for row."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from store import migrations
from store.models import Job
from store.session import make_engine
from tests.workers.precompute_helpers import (
    SINGLE_THREAD_ENV,
    assert_same_store,
    register_random,
    register_synthetic,
    snapshot,
)

EXAMPLES = ["precompute", "examples", "--model", "toy-rn", "--layer", "layer4", "--layer", "layer3", "--dataset", "world",
            "--k", "8", "--batch-size", "4", "--shards", "2", "--checkpoint-every", "1", "--crop-size", "32", "--quiet"]
WORDS = ["precompute", "words", "--model", "toy-rn", "--layer", "layer4", "--layer", "attnpool", "--words", "200",
         "--batch-size", "8", "--checkpoint-every", "1", "--top", "8", "--quiet"]


def _env(url: str, folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    env.update(MICROSCOPE_DATA_DIR=str(folder / "data"), MICROSCOPE_DATABASE_URL=url,
               MICROSCOPE_BLOB_URL=str(folder / "blobs"), MICROSCOPE_DEVICE="cpu", **SINGLE_THREAD_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")) if p)
    return env


def _prepare(url: str, folder: Path) -> None:
    migrations.upgrade(url)
    register_random(url, "toy-rn", "toy-rn")
    register_synthetic(url, folder, "world", 120)


def _run(args, env) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    return result


class _Progress:
    """Items the jobs of one kind account for (their cursors), read through one engine."""

    def __init__(self, url: str, kind: str) -> None:
        self.engine = make_engine(url)
        self.kind = kind

    def __call__(self) -> int:
        with self.engine.connect() as connection:
            stmt = select(func.coalesce(func.sum(Job.cursor), 0)).where(Job.kind == self.kind)
            return connection.execute(stmt).scalar_one()

    def close(self) -> None:
        self.engine.dispose()


def _kill_at_random(args, env, url: str, kind: str, rng: random.Random) -> str:
    """Start the command, wait until it has made progress of its own, SIGKILL it after a
    random delay (mid-pass, mid-checkpoint or mid-merge, wherever that falls)."""
    progress = _Progress(url, kind)
    try:
        before = progress()
        process = subprocess.Popen([sys.executable, "-m", "cli.main", *args], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while progress() <= before and process.poll() is None:
            assert time.monotonic() < deadline, "no progress within 10 minutes"
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 1.5))
        if process.poll() is not None:
            assert process.returncode == 0, process.stderr.read()
            return "finished before the kill"
        process.send_signal(signal.SIGKILL)
        process.wait()
        return f"killed at {progress()} items"
    finally:
        progress.close()


def kill_mid_pass(args, kind: str, folder: Path, prepare, rows, total: int, attempts: int = 3):
    """A command SIGKILLed mid-pass: (url, env, outcomes, rows written before the kill).

    A short pass can finish its last commit before the random kill lands, which kills nothing
    worth resuming; such an attempt starts again on a fresh store `prepare(url, folder)` makes,
    at most `attempts` times. `rows(url)` reads the job's results; `total` is their full count."""
    rng = random.Random()
    outcomes = []
    for attempt in range(attempts):
        where = folder / f"attempt-{attempt}"
        where.mkdir()
        url = f"sqlite:///{where / 'resumed.db'}"
        prepare(url, where)
        env = _env(url, where)
        outcomes.append(_kill_at_random(args, env, url, kind, rng))
        partial = rows(url)
        if outcomes[-1].startswith("killed") and len(partial) < total:
            break
    return url, env, outcomes, partial


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """The uninterrupted run, once for both backends."""
    folder = tmp_path_factory.mktemp("clean")
    url = f"sqlite:///{folder / 'm.db'}"
    _prepare(url, folder)
    env = _env(url, folder)
    _run(EXAMPLES, env)
    _run(WORDS, env)
    return snapshot(url)


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_uninterrupted_run(database_url, tmp_path, clean_run):
    _prepare(database_url, tmp_path)
    env = _env(database_url, tmp_path)
    rng = random.Random()
    outcomes = []
    for args, kind, kills in ((EXAMPLES, "examples", 2), (WORDS, "words", 1)):
        for _ in range(kills):  # the second kill hits a resumed run
            outcomes.append(_kill_at_random(args, env, database_url, kind, rng))
        _run(args, env)
    print("kill outcomes:", outcomes)
    assert any(o.startswith("killed") for o in outcomes), outcomes

    resumed = snapshot(database_url)
    assert len(clean_run["dataset_examples"]) == (768 + 384) * 2 * 8
    assert len(clean_run["word_activations"]) == (768 + 128) * 8
    assert_same_store(clean_run, resumed)
