"""`microscope precompute maxtext`: every unit's maximal text, the token sequence whose text
embedding has the largest dot product with the unit's direction (precompute.discovery.maximal_texts).

One job row (kind `maxtext`, the layer, the directions' dataset, one per shard) per contiguous
shard of the layer's direction set (store.directions, written by the directions job). The
items are the set's units, in order; each span of units climbs together (all their proposals
through the text tower in one batch) and its `maximal_texts` rows are written in the same
transaction as the job's cursor, so a killed run resumes at the first span it had not
committed and ends with the rows of an uninterrupted one. Units whose direction is zero (they
never fired) have nothing to maximise and get no row.

The job's plan (the direction blob, the climb's parameters, the shard) is kept in a small
state file the job row points at: a re-run with another plan starts the layer over.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from precompute.discovery import MAXIMAL_TEXT_DEFAULTS, maximal_texts
from precompute.errors import MicroscopeError
from store import repository
from store.blobs import BlobStore
from workers.engines import ENGINES, Progress, StoreConfig, sessions_for, set_threads
from workers.locks import driver_lock
from workers.loop import (Cadence, Checkpoint, claimed, open_store, release_orphans, run_pass, run_with_progress,
                          shard_bounds, spans)
from workers.state import StateStore

KIND = "maxtext"
MAX_LENGTH = 16


@dataclass(frozen=True)
class MaxTextRequest:
    model_id: str
    layer: str
    dataset_id: str | None = None  # whose directions; default the layer's most recent set
    length: int = MAXIMAL_TEXT_DEFAULTS["length"]  # tokens per text
    steps: int = MAXIMAL_TEXT_DEFAULTS["steps"]  # hill-climbing steps at most
    candidates: int = MAXIMAL_TEXT_DEFAULTS["candidates"]  # proposals per position and step
    starts: int = MAXIMAL_TEXT_DEFAULTS["starts"]  # best single words the climb starts from
    limit: int | None = None  # only the direction set's first `limit` units
    units_per_batch: int = 128  # units that climb (and are committed) together
    shards: int = 1
    device: str = "cpu"
    engine: str = "local"
    restart: bool = False
    threads: int = 0
    ray_address: str | None = None

    def validate(self) -> None:
        if not 1 <= self.length <= MAX_LENGTH:
            raise MicroscopeError(f"--length must be between 1 and {MAX_LENGTH} tokens, not {self.length}")
        for name, value in (("--steps", self.steps), ("--candidates", self.candidates), ("--starts", self.starts),
                            ("--units-per-batch", self.units_per_batch), ("--shards", self.shards)):
            if value < 1:
                raise MicroscopeError(f"{name} must be at least 1, not {value}")
        if self.limit is not None and self.limit < 1:
            raise MicroscopeError("--limit must be at least 1")
        if self.engine not in ENGINES:
            raise MicroscopeError(f"--engine must be one of {', '.join(ENGINES)}")

    def parameters(self) -> dict[str, int]:
        return {"length": self.length, "steps": self.steps, "candidates": self.candidates, "starts": self.starts}


@dataclass(frozen=True)
class MaxTextTask:
    store: StoreConfig
    request: MaxTextRequest
    dataset_id: str  # of the direction set
    shard: int
    bounds: tuple[int, int]  # [start, stop) of the direction set's rows
    plan: dict
    threads: int


def _directions(session, blobs: BlobStore, layer_id: int, dataset_id: str | None):
    """The layer's stored directions, or a MicroscopeError when their set has gone meanwhile."""
    from store.directions import load_layer_directions

    found = load_layer_directions(session, blobs, layer_id, dataset_id)
    if found is None:
        raise MicroscopeError("the layer's directions are gone; run the directions job again")
    return found


def run_maxtext(store: StoreConfig, request: MaxTextRequest, *, show_progress: bool = True, loaded=None) -> dict:
    """Plan and run the maximal texts of one layer's units."""
    from store.directions import require_direction_set

    request.validate()
    started = time.monotonic()
    with open_store(store) as opened:
        engine, sessions, states, blobs = opened
        with sessions() as session:
            layer_row, row = require_direction_set(session, request.model_id, request.layer, request.dataset_id)
            found = _directions(session, blobs, layer_row.id, row.dataset_id)
            dataset_id, blob_uri = row.dataset_id, row.blob_uri
            total = len(found.units) if request.limit is None else min(request.limit, len(found.units))
        summary: dict[str, Any] = {"model": request.model_id, "layer": request.layer, "dataset": dataset_id,
                                   "engine": request.engine, **request.parameters()}
        bounds = shard_bounds(total, request.shards)
        plan = {"model": request.model_id, "layer": request.layer, "directions": blob_uri, "units": total,
                **request.parameters()}
        with driver_lock(engine, f"maxtext of {request.model_id}/{request.layer}"):
            jobs = _plan(sessions, states, request, dataset_id, plan, bounds)
            if not jobs:
                summary.update(status="already done", units=total, seconds=round(time.monotonic() - started, 2))
                return summary
            threads = request.threads or torch.get_num_threads()
            tasks = [MaxTextTask(store, request, dataset_id, shard, bounds[shard], plan, threads) for shard in jobs]
            remaining = sum(job.total_items - job.cursor for job in jobs.values())
            results = run_with_progress(run_maxtext_pass, tasks, request, opened, [job.id for job in jobs.values()],
                                        total=total, done=total - remaining, desc=f"maxtext {request.layer}", unit="unit",
                                        show=show_progress, loaded=loaded)
        written = sum(result["texts_written"] for result in results)
        seconds = time.monotonic() - started
        summary.update(status="done", units=total, texts_written=written, seconds=round(seconds, 2))
        return summary


def _plan(sessions, states: StateStore, request: MaxTextRequest, dataset_id: str, plan: dict,
          bounds: Sequence[tuple[int, int]]) -> dict[int, Any]:
    """{shard: job row} of the shards still to run; a shard planned otherwise is reset, and
    rows of shards beyond the current count (an earlier --shards) are dropped."""
    with sessions() as session:
        existing = {job.shard: job for job in repository.find_jobs(session, KIND, request.model_id, layer=request.layer,
                                                                   dataset_id=dataset_id)}
        for shard, job in existing.items():
            if shard >= len(bounds):
                states.delete(job.state_uri)
                session.delete(job)
        open_jobs = {}
        for shard, (start, stop) in enumerate(bounds):
            job = existing.get(shard) or repository.ensure_job(session, KIND, request.model_id, layer=request.layer,
                                                               dataset_id=dataset_id, shard=shard, shard_count=len(bounds),
                                                               total_items=stop - start)
            meta = states.meta(job.state_uri) if job.state_uri else None
            wanted = {**plan, "shard": [shard, len(bounds), start, stop]}
            if request.restart or meta is None or meta.get("plan") != wanted:
                states.delete(job.state_uri)
                repository.checkpoint_job(session, job.id, 0, None, total_items=stop - start)
                repository.reset_job(session, job.id)
                job.shard_count = len(bounds)
            elif job.state == "done":
                continue
            else:
                release_orphans(session, [job])
            open_jobs[shard] = job.id
        session.commit()
        rows = {job.id: job for job in repository.find_jobs(session, KIND, request.model_id, layer=request.layer,
                                                            dataset_id=dataset_id)}
        return {shard: rows[job_id] for shard, job_id in open_jobs.items()}


def run_maxtext_pass(task: MaxTextTask, *, loaded=None, progress: Progress | None = None) -> dict:
    """Run (or resume) one shard's pass of `task`; usable in-process and as a Ray task."""
    from store.loading import load_registered
    from store.text_pools import layer_unit_ids

    set_threads(task.threads)
    request = task.request
    engine, sessions = sessions_for(task.store)
    blobs = BlobStore(task.store.blob_url)
    try:
        with sessions() as session:
            job = next(job for job in repository.find_jobs(session, KIND, request.model_id, layer=request.layer,
                                                           dataset_id=task.dataset_id) if job.shard == task.shard)
            layer_row = repository.get_layer(session, request.model_id, request.layer)
            found = _directions(session, blobs, layer_row.id, task.dataset_id)
            unit_ids = layer_unit_ids(session, layer_row.id)
            if loaded is None:  # in a Ray task: load the model from its store record
                loaded = load_registered(session, request.model_id, device=request.device)
            session.commit()
        start, stop = task.bounds
        with claimed(sessions, {f"shard {task.shard}": job}, KIND) as rows:
            states = StateStore(task.store.states)
            plan_uri = states.save(f"{KIND}-{job.id}-plan", {},
                                   {"plan": {**task.plan, "shard": [task.shard, task.request.shards, start, stop]}})
            work = _MaxTextPass(loaded, request, task.dataset_id, found.units[start:stop], found.directions[start:stop],
                                unit_ids, plan_uri)
            result = run_pass(sessions, work, rows, stop - start, Cadence(every=1), progress)
        return {"units": result.items, "texts_written": work.written}
    finally:
        engine.dispose()


class _MaxTextPass:
    """The loop's work: items are one shard's units; each span climbs together and its rows go
    into the span's checkpoint transaction. The row's state file holds only the plan."""

    def __init__(self, loaded, request: MaxTextRequest, dataset_id: str, units: np.ndarray, directions: np.ndarray,
                 unit_ids: dict[int, int], plan_uri: str) -> None:
        self.loaded, self.request, self.dataset_id = loaded, request, dataset_id
        self.units, self.directions, self.unit_ids, self.plan_uri = units, directions, unit_ids, plan_uri
        self.pending: list[dict[str, Any]] = []
        self.written = 0

    def batches(self, start: int):
        return spans(start, len(self.units), self.request.units_per_batch)

    def compute(self, batch, names: list[str]) -> None:
        directions = np.asarray(self.directions[batch.start:batch.stop], dtype=np.float32)
        units = [int(u) for u in self.units[batch.start:batch.stop]]
        live = [i for i in range(len(units)) if float(np.linalg.norm(directions[i])) > 0]
        parameters = self.request.parameters()
        found = maximal_texts(self.loaded, directions[live], **parameters) if live else []
        self.pending = [{"unit_id": self.unit_ids[units[i]], "text": result.text, "tokens": list(result.tokens),
                         "score": result.score, "start_text": result.start_text, "start_score": result.start_score,
                         "steps": result.steps, "parameters": parameters} for i, result in zip(live, found)]

    def save(self, name: str, cursor: int, done: bool) -> Checkpoint:
        from store.maximal_texts import write_maximal_texts

        rows, dataset_id = self.pending, self.dataset_id
        return Checkpoint(self.plan_uri, lambda session: write_maximal_texts(session, dataset_id, rows))

    def committed(self, name: str, checkpoint: Checkpoint) -> None:
        self.written += len(self.pending)
        self.pending = []


def maxtext_layers(store: StoreConfig, layers: dict[str, Sequence[str]], *, loaded: dict[str, Any] | None = None,
                   limit: int | None = None, steps: int = MAXIMAL_TEXT_DEFAULTS["steps"], device: str = "cpu",
                   show_progress: bool = True) -> Iterator[str]:
    """What the demo runs after the directions job: every named layer's maximal texts
    ({model: [layers]}), one line of news per layer. A layer without directions is said and
    skipped, not an error."""
    for model_id, names in layers.items():
        for layer in names:
            request = MaxTextRequest(model_id=model_id, layer=layer, limit=limit, steps=steps, device=device)
            try:
                summary = run_maxtext(store, request, show_progress=show_progress, loaded=(loaded or {}).get(model_id))
            except MicroscopeError as error:
                yield f"{model_id} {layer}: no maximal texts ({error})"
                continue
            yield (f"{model_id} {layer}: maximal texts of {summary['units']} units "
                   f"({summary['status']}, {summary['seconds']} s)")
