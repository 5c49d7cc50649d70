"""Job states are kept by name, relative to the state store: a moved data folder (or a shard on
another machine) still finds them, and a job killed before the move resumes after it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from store.models import Job
from store.session import make_engine, make_sessionmaker
from tests.workers.precompute_helpers import assert_same_store, snapshot
from tests.workers.test_sigkill import _Progress, _env, _prepare, _run
from workers.state import StateStore, state_name


def test_save_returns_a_name_that_resolves_after_a_move(tmp_path: Path) -> None:
    old = StateStore(str(tmp_path / "old" / "job-state"))
    reference = old.save("examples-7-0000000040", {"heap": np.arange(6, dtype=np.float32)}, {"cursor": 40})
    assert reference == "examples-7-0000000040.npz"
    assert (tmp_path / "old" / "job-state" / reference).is_file()

    shutil.move(tmp_path / "old", tmp_path / "new")
    moved = StateStore(str(tmp_path / "new" / "job-state"))
    arrays, meta = moved.load(reference)
    assert meta == {"cursor": 40} and arrays["heap"].tolist() == [0, 1, 2, 3, 4, 5]
    assert moved.meta(reference) == {"cursor": 40}
    # A row an older store wrote names the old folder: its name is what counts.
    legacy = f"file://{tmp_path}/old/job-state/{reference}"
    assert state_name(legacy) == reference and moved.meta(legacy) == {"cursor": 40}
    assert moved.uri(reference) == f"file://{tmp_path}/new/job-state/{reference}"


def test_cleanup_keeps_what_rows_name_legacy_uris_included(tmp_path: Path) -> None:
    states = StateStore(str(tmp_path / "job-state"))
    kept = states.save("words-3-000000000-000000020", {}, {})
    legacy_kept = states.save("words-3-000000020-000000040", {}, {})
    stray = states.save("words-3-000000040-000000060", {}, {})
    other_job = states.save("words-4-000000000-000000020", {}, {})
    removed = states.cleanup("words-3-", {kept, f"file:///somewhere/else/job-state/{legacy_kept}", None})
    assert removed == 1
    left = sorted(p.name for p in (tmp_path / "job-state").iterdir())
    assert left == sorted([kept, legacy_kept, other_job]) and stray not in left
    states.delete(kept)
    states.delete(kept)  # already gone: nothing to do
    assert not (tmp_path / "job-state" / kept).exists()


def test_rejects_what_is_not_a_state_name(tmp_path: Path) -> None:
    states = StateStore(str(tmp_path / "job-state"))
    for bad in ("file:///x/", "words-1.npy", ".hidden.npz", ""):
        with pytest.raises(ValueError):
            state_name(bad)
    # Only the last segment counts, so no reference reaches outside the store.
    assert states.uri("../../escape.npz") == f"file://{tmp_path}/job-state/escape.npz"
    with pytest.raises(ValueError):
        states.load("../../etc/passwd")


EXAMPLES = ["precompute", "examples", "--model", "toy-rn", "--layer", "layer4", "--dataset", "world", "--k", "8",
            "--batch-size", "4", "--checkpoint-every", "1", "--crop-size", "32", "--quiet"]


def _killed_after_a_checkpoint(env: dict[str, str], url: str) -> None:
    progress = _Progress(url, "examples")
    try:
        process = subprocess.Popen([sys.executable, "-m", "cli.main", *EXAMPLES], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while progress() == 0:
            assert process.poll() is None, f"finished before a checkpoint could be seen: {process.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        progress.close()


@pytest.mark.slow
def test_a_job_killed_before_the_move_resumes_after_it(tmp_path: Path) -> None:
    """SQLite inside the data folder, so the database moves with the blobs and the states."""
    clean = tmp_path / "clean"
    clean_url = f"sqlite:///{clean / 'm.db'}"
    _prepare(clean_url, clean)
    _run(EXAMPLES, _env(clean_url, clean))

    before, after = tmp_path / "before", tmp_path / "after"
    _prepare(f"sqlite:///{before / 'm.db'}", before)
    _killed_after_a_checkpoint(_env(f"sqlite:///{before / 'm.db'}", before), f"sqlite:///{before / 'm.db'}")
    shutil.move(before, after)
    url = f"sqlite:///{after / 'm.db'}"

    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            interrupted = session.scalars(select(Job).where(Job.kind == "examples", Job.cursor > 0)).all()
        assert interrupted and all(job.state != "done" and job.state_uri for job in interrupted)
        states = StateStore(str(after / "blobs" / "job-state"))
        assert all(states.meta(job.state_uri) for job in interrupted)  # found where the folder is now
    finally:
        engine.dispose()

    _run(EXAMPLES, _env(url, after))
    assert_same_store(snapshot(clean_url), snapshot(url))
