"""`microscope serve --workers 2`: two real server processes on one port, each with its own
page cache, stay consistent: a write through one request is seen by every later request,
whichever process answers it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import select

from store import annotations, repository
from store.models import Unit, WordActivation
from store.session import make_engine, make_sessionmaker, session_scope
from tests.sample_store import WORD_LIST, populate
from tests.server import REPO, _wait_ready, free_port, stop_group

WORKERS = 2
READS = 40
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@contextmanager
def serve_workers(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(WORKERS),
             "--no-access-log"],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            _wait_ready(url + "/healthz", server, log_path, 180)
            deadline = time.monotonic() + 120
            while log_path.read_text().count("Application startup complete") < WORKERS:
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
            yield url, server
        finally:
            stop_group(server)


def _cpu_ticks(server: subprocess.Popen) -> dict[int, int]:
    """CPU time (clock ticks) of each of the server's child processes: uvicorn's workers."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    ticks = {}
    for pid in map(int, children):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def _read_all(url: str, paths: list[str], server: subprocess.Popen) -> tuple[list[httpx.Response], int]:
    """Each path READS times, each on a new connection (so the kernel spreads them over the
    workers); and how many workers spent at least 30 ms of CPU meanwhile."""
    before = _cpu_ticks(server)
    responses = []
    with httpx.Client(timeout=30, headers={"Connection": "close"}) as client:
        for _ in range(READS):
            for path in paths:
                responses.append(client.get(url + path))
    after = _cpu_ticks(server)
    busy = sum(1 for pid, ticks in after.items() if ticks - before.get(pid, ticks) >= 0.03 * CLOCK_TICKS)
    return responses, busy


def _job_commits_new_top_word(database_url: str, model_id: str, layer: str, index: int, word: str) -> None:
    """What the job loop does when a words job finishes: its results and its row's checkpoint,
    in one transaction."""
    engine = make_engine(database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            layer_row = repository.get_layer(session, model_id, layer)
            unit_id = session.execute(select(Unit.id).where(Unit.layer_id == layer_row.id, Unit.index == index)).scalar_one()
            rows = [{"unit_id": unit_id, "word_list_id": WORD_LIST, "rank": 0, "word": word, "activation": 99.0}]
            repository.replace_word_activations(session, WORD_LIST, [unit_id], rows)
            job = repository.ensure_job(session, "words", model_id, layer=layer, total_items=1)
            repository.checkpoint_job(session, job.id, 1, None, done=True, total_items=1)
    finally:
        engine.dispose()


def test_writes_through_one_worker_show_on_every_workers_pages(migrated_url: str, tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    populated = populate(migrated_url, str(blobs), units=8, images=16)
    model_id = "toy-rn"
    layer = populated.models[model_id]["layer"]
    engine = make_engine(migrated_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            _, token = annotations.create_token(session, "tester")
            stored = session.execute(select(WordActivation.word).join(Unit, Unit.id == WordActivation.unit_id)
                                     .where(Unit.index == 2)).scalars().all()
    finally:
        engine.dispose()
    assert stored and "zebra-from-a-job" not in stored

    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    # A cache lifetime far beyond the test: only the cross-process generation can make pages fresh.
    env.update(MICROSCOPE_DATABASE_URL=migrated_url, MICROSCOPE_BLOB_URL=str(blobs), MICROSCOPE_DATA_DIR=str(tmp_path),
               MICROSCOPE_PAGE_CACHE_SECONDS="3600", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    unit = f"/models/{model_id}/{layer}"
    pages = [f"{unit}/0", f"{unit}/1", f"{unit}/2", f"/api/v1{unit}/1", f"/api/v1{unit}/2"]
    with serve_workers(env, tmp_path / "server.log") as (url, server):
        before, busy = _read_all(url, pages, server)  # fills both workers' caches
        assert busy == WORKERS, "the reads did not reach every worker"
        assert all(r.status_code == 200 for r in before)
        assert "a label written through the API" not in before[0].text

        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(timeout=30) as client:
            r = client.put(f"{url}/api/v1{unit}/0/label", json={"text": "a label written through the API"}, headers=auth)
            assert r.status_code == 200, r.text
            r = client.post(f"{url}/api/v1{unit}/1/notes", json={"text": "a note written through the API"}, headers=auth)
            assert r.status_code == 201, r.text
        _job_commits_new_top_word(migrated_url, model_id, layer, 2, "zebra-from-a-job")

        after, busy = _read_all(url, pages, server)
        assert busy == WORKERS, "the reads did not reach every worker"
    by_page: dict[str, list[httpx.Response]] = {page: after[i::len(pages)] for i, page in enumerate(pages)}
    assert all(r.status_code == 200 for r in after)
    # Unit 0's own page, and unit 1's nearest units (every other unit of 8 is among its 12 nearest).
    assert all("a label written through the API" in r.text for r in by_page[f"{unit}/0"])
    assert all("a label written through the API" in r.text for r in by_page[f"{unit}/1"])
    for r in by_page[f"/api/v1{unit}/1"]:
        neighbour = next(n for n in r.json()["nearest"]["units"] if n["index"] == 0)
        assert neighbour["label"] == "a label written through the API"
        assert [a["text"] for a in r.json()["annotations"] if a["kind"] == "note"] == ["a note written through the API"]
    assert all("a note written through the API" in r.text for r in by_page[f"{unit}/1"])
    # The job's new top word, on the HTML page and its JSON twin.
    assert all('data-word="zebra-from-a-job"' in r.text for r in by_page[f"{unit}/2"])
    for r in by_page[f"/api/v1{unit}/2"]:
        assert [w["word"] for g in r.json()["words"] for w in g["words"]] == ["zebra-from-a-job"]


def test_serve_refuses_fewer_than_one_worker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    env.update(MICROSCOPE_DATA_DIR=str(tmp_path), PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "cli.main", "serve", "--workers", "0"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["error: --workers must be at least 1"]


def test_settings_travel_to_worker_processes_whole(monkeypatch, tmp_path: Path) -> None:
    from app.server import settings_environment
    from app.settings import Settings

    given = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}", port=8123, page_cache_seconds=5.5,
                     cookie_secure=True, device="cpu", live_rate_limit="5/second", rendered_page_cache_entries=7)
    for name, value in settings_environment(given).items():
        monkeypatch.setenv(name, value)
    assert Settings() == given
