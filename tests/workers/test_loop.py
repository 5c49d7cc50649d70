"""The job loop on its own, with a job made for the test: items are integers, each row of the
pass stores item x factor as a result row and keeps a running sum as its state. A failure
at any point (in the compute, half-way through the writes of a checkpoint) and a re-run
must leave every result exactly once and the same state as an uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select

from precompute.errors import MicroscopeError
from store import repository
from store.models import Model
from store.session import make_engine, make_sessionmaker
from workers.loop import Cadence, Checkpoint, Span, claimed, release_orphans, run_pass, shard_bounds, spans
from workers.state import StateStore

ITEMS = 23
FACTORS = {"single": 1, "triple": 3}
RESULTS = Table("loop_test_results", MetaData(), Column("row", String(16), primary_key=True),
                Column("item", Integer, primary_key=True), Column("value", Integer))


class Boom(Exception):
    pass


class Multiples:
    """The test's job. `fail_in_compute` / `fail_in_write` name a batch start to fail at."""

    def __init__(self, jobs, states: StateStore, fail_in_compute: int | None = None, fail_in_write: int | None = None):
        self.states, self.fail_in_compute, self.fail_in_write = states, fail_in_compute, fail_in_write
        self.job_ids = {name: job.id for name, job in jobs.items()}
        self.sums = {name: int(states.load(job.state_uri)[0]["sum"]) if job.state_uri else 0 for name, job in jobs.items()}
        self.pending: dict[str, list[tuple[int, int]]] = {name: [] for name in jobs}
        self.computed: list[tuple[str, int]] = []

    def batches(self, start: int):
        return spans(start, ITEMS, 4)

    def compute(self, batch: Span, names: list[str]) -> None:
        if batch.start == self.fail_in_compute:
            raise Boom("in compute")
        for name in names:
            for item in range(batch.start, batch.stop):
                self.pending[name].append((item, item * FACTORS[name]))
                self.sums[name] += item * FACTORS[name]
                self.computed.append((name, item))

    def save(self, name: str, cursor: int, done: bool) -> Checkpoint:
        uri = self.states.save(f"multiples-{self.job_ids[name]}-{cursor:06d}", {"sum": np.array(self.sums[name])}, {})
        rows = [{"row": name, "item": item, "value": value} for item, value in self.pending[name]]
        fail = self.fail_in_write is not None and any(row["item"] == self.fail_in_write for row in rows)

        def write(session) -> None:
            if rows:
                session.execute(RESULTS.insert(), rows)
            if fail:
                raise Boom("half-way through the writes")

        return Checkpoint(uri, write)

    def committed(self, name: str, checkpoint: Checkpoint) -> None:
        self.pending[name] = []


def _jobs(sessions):
    with sessions() as session:
        jobs = {name: repository.ensure_job(session, "multiples", "m", layer=name, total_items=ITEMS) for name in FACTORS}
        session.commit()
        return jobs


def _attempt(sessions, states, names=tuple(FACTORS), **fail) -> Multiples:
    orphans = _jobs(sessions).values()
    with sessions() as session:
        release_orphans(session, orphans)
        session.commit()
    todo = {name: job for name, job in _jobs(sessions).items() if job.state != "done" and name in names}
    with claimed(sessions, todo, "multiples") as rows:
        work = Multiples(rows, states, **fail)
        run_pass(sessions, work, rows, ITEMS, Cadence(every=2))
    return work


@pytest.fixture
def sessions(migrated_url):
    engine = make_engine(migrated_url)
    RESULTS.create(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        session.add(Model(id="m", arch="test", source="random", image_size=8, preprocess={}))
        session.commit()
    yield sessions
    engine.dispose()


def _stored(sessions) -> dict:
    with sessions() as session:
        results = sorted(session.execute(select(RESULTS.c.row, RESULTS.c.item, RESULTS.c.value)).all())
        rows = [job for name in FACTORS for job in repository.find_jobs(session, "multiples", "m", layer=name)]
    return {"results": results, "jobs": {job.layer: (job.state, job.cursor, job.done_items, job.progress) for job in rows},
            "uris": {job.layer: job.state_uri for job in rows}}


# Written out rather than derived from the loop: every item once per row, and its multiple.
EXPECTED_RESULTS = sorted([("single", i, i) for i in range(ITEMS)] + [("triple", i, 3 * i) for i in range(ITEMS)])
EXPECTED_SUMS = {"single": 253, "triple": 759}  # 0 + 1 + ... + 22 = 253


def _check(sessions, states) -> None:
    stored = _stored(sessions)
    assert stored["results"] == EXPECTED_RESULTS
    assert stored["jobs"] == {"single": ("done", ITEMS, ITEMS, 1.0), "triple": ("done", ITEMS, ITEMS, 1.0)}
    assert {name: int(states.load(uri)[0]["sum"]) for name, uri in stored["uris"].items()} == EXPECTED_SUMS


def test_an_uninterrupted_pass(sessions, tmp_path):
    states = StateStore(str(tmp_path / "states"))
    work = _attempt(sessions, states)
    _check(sessions, states)
    assert sorted(work.computed) == sorted((name, i) for name in FACTORS for i in range(ITEMS))
    assert _attempt(sessions, states).computed == []  # done is done


@pytest.mark.parametrize("fail", [{"fail_in_compute": 0}, {"fail_in_compute": 12}, {"fail_in_compute": 20},
                                  {"fail_in_write": 5}, {"fail_in_write": 22}], ids=lambda f: f"{next(iter(f))}={next(iter(f.values()))}")
def test_a_failure_then_a_rerun_leaves_each_result_once(sessions, tmp_path, fail):
    states = StateStore(str(tmp_path / "states"))
    with pytest.raises(Boom):
        _attempt(sessions, states, **fail)
    failed = _stored(sessions)
    assert {state for state, *_ in failed["jobs"].values()} == {"failed"}
    # What was committed before the failure is whole checkpoints: rows up to the cursor, no more.
    for name, (_, cursor, *_) in failed["jobs"].items():
        assert [item for row, item, _ in failed["results"] if row == name] == list(range(cursor))
    rerun = _attempt(sessions, states)
    _check(sessions, states)
    # The re-run starts at the checkpoint: it computes only what was not committed.
    committed = {name: cursor for name, (_, cursor, *_) in failed["jobs"].items()}
    assert sorted(rerun.computed) == sorted((name, i) for name in FACTORS for i in range(committed[name], ITEMS))


def test_rows_at_different_cursors_each_join_where_they_stopped(sessions, tmp_path):
    states = StateStore(str(tmp_path / "states"))
    with pytest.raises(Boom):
        _attempt(sessions, states, names=("triple",), fail_in_compute=12)
    assert _stored(sessions)["jobs"]["triple"][1] == 8 and _stored(sessions)["jobs"]["single"][1] == 0
    work = _attempt(sessions, states)
    _check(sessions, states)
    assert sorted(work.computed) == sorted([("single", i) for i in range(ITEMS)] + [("triple", i) for i in range(8, ITEMS)])


def test_a_row_claimed_elsewhere_is_refused(sessions, tmp_path):
    with sessions() as session:
        jobs = _jobs(sessions)
        repository.claim_job(session, job_id=jobs["triple"].id)
        session.commit()
    with pytest.raises(MicroscopeError, match=r"multiples job \d+ \(triple\) is running elsewhere"):
        with claimed(sessions, _jobs(sessions), "multiples"):
            pass
    # Nothing was claimed by the refused attempt.
    assert _stored(sessions)["jobs"]["single"][0] == "pending"


def test_shard_bounds_cut_every_item_once():
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(2, 5) == [(0, 1), (1, 2)]
    assert shard_bounds(7, 1) == [(0, 7)]
