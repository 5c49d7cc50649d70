"""The resumable loop every precompute job runs on.

A job is its items, its per-item compute and its writes; this module does the rest:

- `run_pass` walks a job's items in order, in batches, for one or several job rows at once
  (one per layer: the model runs once per batch and every row takes its share). Every
  `Cadence.every` batches (or `Cadence.seconds`) and at the end it asks the job to `save`
  each row's state and commits, in one transaction, the job's result rows, every row's
  cursor and state URI and, at the end, `done`. A killed pass re-run starts at the smallest
  cursor and a row joins the pass at the first batch it has not accounted for, so the same
  batches run and the results equal an uninterrupted run's.
- `claimed` claims job rows for a pass and marks them failed (resumable) when it raises.
- `release_orphans` frees the rows of a killed driver, `shard_bounds` cuts items into
  contiguous shards, `run_shards` runs shard tasks in this process or as Ray tasks.

What a job implements is the `Work` protocol below; `docs/jobs.md` walks through one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

from store import repository
from store.blobs import BlobStore
from precompute.errors import MicroscopeError
from workers.engines import Progress, StoreConfig, done_items, run_on_ray, sessions_for
from workers.state import StateStore

Task = TypeVar("Task")


class Batch(Protocol):
    start: int  # index of the batch's first item
    stop: int  # one past its last item
    skipped: Sized  # items of the batch that could not be used (counted, not retried)


@dataclass(frozen=True)
class Span:
    """A batch that is just a range of items (units, words), for jobs that need no loader."""

    start: int
    stop: int
    skipped: tuple = ()


def spans(start: int, total: int, size: int) -> Iterator[Span]:
    """Batches of `size` items from `start` to `total`."""
    for begin in range(start, total, size):
        yield Span(begin, min(total, begin + size))


@dataclass(frozen=True)
class Checkpoint:
    """What one job row records at a checkpoint."""

    state_uri: str | None  # where the row's state at this cursor lives (None: it needs none)
    write: Callable[[Any], None] | None = None  # result rows to add in the checkpoint's transaction


@dataclass(frozen=True)
class Cadence:
    """How often a pass checkpoints: every `every` batches or `seconds`, whichever comes first."""

    every: int = 1
    seconds: float = math.inf


class Work(Protocol):
    """A job's part of a pass. `names` are the job's own names for its rows (layer names)."""

    def batches(self, start: int) -> Iterable[Batch]:
        """The job's batches of items from item index `start`, in order, always cut the same way."""

    def compute(self, batch: Batch, names: list[str]) -> None:
        """Run the per-item compute of `batch` into the state of the rows `names`."""

    def save(self, name: str, cursor: int, done: bool) -> Checkpoint | None:
        """Persist row `name`'s state at `cursor` (state files, before the transaction) and say
        what the checkpoint records; None when there is nothing new to record."""

    def committed(self, name: str, checkpoint: Checkpoint) -> None:
        """The checkpoint is durable: drop what it supersedes."""


class AccumulatorPass:
    """`save` and `committed` for work whose state per row is an accumulator, saved whole to a
    state file at every checkpoint; the file a checkpoint supersedes is deleted once the
    checkpoint is durable. A subclass provides `kind` (the state files' prefix), `states` (a
    StateStore), and per row `job_ids`, `accumulators` (each with `state() -> (arrays, meta)`),
    `plans` and `current_uri`."""

    kind: str

    def save(self, name: str, cursor: int, done: bool) -> Checkpoint:
        arrays, meta = self.accumulators[name].state()
        meta["plan"] = self.plans[name]
        return Checkpoint(self.states.save(f"{self.kind}-{self.job_ids[name]}-{cursor:010d}", arrays, meta))

    def committed(self, name: str, checkpoint: Checkpoint) -> None:
        if self.current_uri[name] != checkpoint.state_uri:
            self.states.delete(self.current_uri[name])
        self.current_uri[name] = checkpoint.state_uri


@dataclass(frozen=True)
class PassResult:
    items: int  # items this run went through
    skipped: int  # of which could not be used


def run_pass(sessions, work: Work, jobs: Mapping[str, Any], total: int, cadence: Cadence,
             progress: Progress | None = None) -> PassResult:
    """Run `work` over items [0, total) for the job rows `jobs` ({name: claimed job row}),
    from where each row got to; every row is done when this returns."""
    cursors = {name: job.cursor for name, job in jobs.items()}

    def commit(names: list[str], done: bool) -> None:
        saved = {name: work.save(name, cursors[name], done) for name in names}
        saved = {name: checkpoint for name, checkpoint in saved.items() if checkpoint is not None}
        with sessions() as session:
            for name, checkpoint in saved.items():
                if checkpoint.write is not None:
                    checkpoint.write(session)
                repository.checkpoint_job(session, jobs[name].id, cursors[name], checkpoint.state_uri, done=done,
                                          total_items=total)
            session.commit()
        for name, checkpoint in saved.items():
            work.committed(name, checkpoint)

    finished = [name for name in jobs if cursors[name] >= total]
    if finished:  # killed after the last checkpoint of these rows, before it said done
        commit(finished, done=True)
    open_names = [name for name in jobs if cursors[name] < total]
    if not open_names:
        return PassResult(0, 0)
    items = skipped = since = 0
    last = time.monotonic()
    for batch in work.batches(min(cursors[name] for name in open_names)):
        active = [name for name in open_names if cursors[name] <= batch.start]
        work.compute(batch, active)
        for name in active:
            cursors[name] = batch.stop
        items += batch.stop - batch.start
        skipped += len(batch.skipped)
        if progress is not None:
            progress.advance(batch.stop - batch.start, len(batch.skipped))
        since += 1
        done = batch.stop >= total
        if done or since >= cadence.every or time.monotonic() - last >= cadence.seconds:
            commit(open_names if done else active, done)
            since, last = 0, time.monotonic()
    return PassResult(items, skipped)


@contextmanager
def claimed(sessions, jobs: Mapping[str, Any], kind: str) -> Iterator[dict[str, Any]]:
    """Claim the job rows `jobs` ({name: job row}) for this process; if the block raises,
    they are marked failed with the error (a re-run resumes them from their cursor)."""
    rows = {}
    with sessions() as session:
        for name, job in jobs.items():
            row = repository.claim_job(session, job_id=job.id)
            if row is None:
                raise MicroscopeError(f"{kind} job {job.id} ({name}) is running elsewhere")
            rows[name] = row
        session.commit()
    try:
        yield rows
    except BaseException as error:
        with sessions() as session:
            for row in rows.values():
                repository.finish_job(session, row.id, error=f"{type(error).__name__}: {error}"[:2000])
            session.commit()
        raise


def stored_plan(states, uri: str | None, *, missing_ok: bool = False) -> dict | None:
    """The plan a job row's state file at `uri` records (None: no state yet, or, with
    `missing_ok`, a state file that is gone)."""
    if not uri:
        return None
    try:
        return states.meta(uri).get("plan")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise


def refuse_other_plan(what: str, planned: dict | None, wanted: dict, *, same_shards: bool = True) -> None:
    """A sharded job's rows keep their plan for good: a re-run planned otherwise is refused,
    naming what differs, rather than mixing two plans' partial results."""
    if planned == wanted and same_shards:
        return
    differ = sorted(k for k in wanted if planned is None or planned.get(k) != wanted[k])
    raise MicroscopeError(f"{what} were planned with other {', '.join(differ) or 'shards'}; "
                          "re-run with the same options, or with --restart to recompute")


def resume_or_start_over(session, states, job, planned: dict | None, wanted: dict, *, restart: bool, total: int,
                         fresh_state: Callable[[], str | None] = lambda: None) -> bool:
    """Whether the job row `job` has work left under the plan `wanted`. On --restart, or when
    it last ran another plan (`planned`), its state is dropped and it starts over at item 0
    from `fresh_state()` (the new state URI, or None); a row done under this plan has none; a
    row left running or failed by a killed run is released to resume from its cursor."""
    if restart or planned != wanted:
        states.delete(job.state_uri)
        repository.checkpoint_job(session, job.id, 0, fresh_state(), total_items=total)
        repository.reset_job(session, job.id)
        return True
    if job.state == "done":
        return False
    release_orphans(session, [job])
    return True


def release_orphans(session, jobs: Iterable[Any]) -> None:
    """Under the driver lock no one else works on these jobs: running ones are orphans of a
    killed run, failed ones get another go. Both resume from their cursor."""
    running = []
    for job in jobs:
        if job.state == "running":
            running.append(job.id)
        elif job.state == "failed":
            repository.reset_job(session, job.id)
    repository.release_jobs(session, running)


def shard_bounds(count: int, shards: int) -> list[tuple[int, int]]:
    """`shards` contiguous [start, stop) ranges of `count` items (fewer if there are fewer items)."""
    shards = min(shards, count)
    return [(s * count // shards, (s + 1) * count // shards) for s in range(shards)]


class OpenStore(NamedTuple):
    """What a job's driver works with: the database engine (for its lock), sessions on it, the
    job states and the blob store."""

    engine: Any
    sessions: Any
    states: StateStore
    blobs: BlobStore


@contextmanager
def open_store(store: StoreConfig) -> Iterator[OpenStore]:
    """The store a job's driver plans and checks in; its connections close when it ends."""
    engine, sessions = sessions_for(store)
    try:
        yield OpenStore(engine, sessions, StateStore(store.states), BlobStore(store.blob_url))
    finally:
        engine.dispose()


def run_with_progress(shard: Callable[..., Any], tasks: Sequence[Task], request: Any, opened: OpenStore,
                      job_ids: Sequence[int], *, total: int, done: int, desc: str, unit: str, show: bool,
                      rows_per_item: int = 1, **local_options: Any) -> list[Any]:
    """`run_shards` behind a progress bar of `total` items (`done` of them already), on the
    engine, Ray address and device the request names; the bar shows only when `show` and
    something is left to do."""
    progress = Progress(total, done, desc, unit, show and done < total)
    try:
        return run_shards(shard, tasks, engine=request.engine, progress=progress, sessions=opened.sessions,
                          job_ids=job_ids, local_options={"progress": progress, **local_options},
                          rows_per_item=rows_per_item, ray_address=request.ray_address, device=request.device)
    finally:
        progress.close()


def run_shards(shard: Callable[..., Any], tasks: Sequence[Task], *, engine: str, progress: Progress,
               local_options: Mapping[str, Any], sessions, job_ids: Sequence[int], rows_per_item: int = 1,
               ray_address: str | None = None, device: str = "cpu") -> list[Any]:
    """`shard(task, **local_options)` for every task in this process (`local`), or `shard(task)`
    as Ray tasks (`ray`; `shard` must be importable by the workers). With Ray the progress bar
    follows the jobs table, which the tasks update at every checkpoint: `rows_per_item` job
    rows advance together per item (the layers of one pass)."""
    if engine == "local":
        return [shard(task, **local_options) for task in tasks]
    start = done_items(sessions, job_ids)

    def poll() -> None:
        progress.set(min(progress.total, progress.initial + (done_items(sessions, job_ids) - start) // rows_per_item))

    gpus = 1 if str(device).startswith("cuda") else 0  # one GPU per shard task
    results = run_on_ray(shard, tasks, ray_address, poll, num_gpus_per_task=gpus)
    progress.set(progress.total)
    return results
