"""`microscope precompute decompose`: every unit's direction as a sparse sum of a pool's texts.

One job (kind `decompose`, the layer, the directions' dataset, shard 0) per layer. Its items
are the units of the layer's direction set (store.directions, written by the directions
job), in order; each span of units is decomposed by batched OMP (precompute.omp) over the
pool's centred text embeddings and its `decompositions` rows are written in the same
transaction as the job's cursor, so a killed run resumes at the first span it had not
committed and ends with the rows of an uninterrupted one.

The pool's embeddings under the model are computed once, in the driver, and cached
(store.text_pools.pool_embeddings); the pass reads them back, so a Ray task needs no model.
The job's plan (pool and its texts, terms, normalisation, the direction blob) is kept in a
small state file the job row points at: a re-run with another plan starts the layer over.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from precompute.errors import MicroscopeError
from precompute.omp import DEFAULT_TERMS, MAX_TERMS, NORMALISATIONS, omp, text_dictionary
from store import repository
from store.blobs import BlobStore
from workers.engines import ENGINES, Progress, StoreConfig, sessions_for, set_threads
from workers.locks import driver_lock
from workers.loop import (Cadence, Checkpoint, claimed, open_store, resume_or_start_over, run_pass, run_with_progress, spans,
                          stored_plan)
from workers.state import StateStore

KIND = "decompose"


@dataclass(frozen=True)
class DecomposeRequest:
    model_id: str
    layer: str
    pool_id: str
    terms: int = DEFAULT_TERMS
    normalisation: str = "unit"
    dataset_id: str | None = None  # whose directions; default the layer's most recent set
    units_per_batch: int = 256
    device: str = "cpu"
    engine: str = "local"
    restart: bool = False
    threads: int = 0
    ray_address: str | None = None

    def validate(self) -> None:
        if not 1 <= self.terms <= MAX_TERMS:
            raise MicroscopeError(f"--terms must be between 1 and {MAX_TERMS}, not {self.terms}")
        if self.normalisation not in NORMALISATIONS:
            raise MicroscopeError(f"--normalisation must be one of {', '.join(NORMALISATIONS)}")
        if self.units_per_batch < 1:
            raise MicroscopeError("--units-per-batch must be at least 1")
        if self.engine not in ENGINES:
            raise MicroscopeError(f"--engine must be one of {', '.join(ENGINES)}")


@dataclass(frozen=True)
class DecomposeTask:
    store: StoreConfig
    request: DecomposeRequest
    dataset_id: str  # of the direction set
    plan: dict
    threads: int


def _pool_dictionary_source(session, blobs: BlobStore, request: DecomposeRequest, loaded=None):
    """The pool row and its embeddings under the model (computed and cached when missing)."""
    from precompute.text_pools import encode_pool
    from store.loading import load_registered
    from store.text_pools import get_pool, pool_embeddings

    pool = get_pool(session, request.pool_id)  # a Problem (a MicroscopeError) names the known pools

    def compute() -> np.ndarray:
        model = loaded if loaded is not None else load_registered(session, request.model_id, device=request.device)
        return encode_pool(model.model, model.tokenizer, list(pool.texts), pool.source, device=model.device).numpy()

    vectors, _ = pool_embeddings(session, blobs, request.model_id, pool, compute)
    return pool, vectors


def run_decompose(store: StoreConfig, request: DecomposeRequest, *, show_progress: bool = True, loaded=None) -> dict:
    """Plan and run the decomposition of one layer's directions over one pool."""
    from store.directions import require_direction_set
    from store.text_pools import texts_sha256

    request.validate()
    started = time.monotonic()
    with open_store(store) as opened:
        engine, sessions, states, blobs = opened
        with sessions() as session:
            layer_row, directions = require_direction_set(session, request.model_id, request.layer, request.dataset_id)
            pool, vectors = _pool_dictionary_source(session, blobs, request, loaded)
            if request.terms > len(pool.texts):
                raise MicroscopeError(f"--terms {request.terms} is more than pool {pool.id!r} holds ({len(pool.texts)} texts)")
            if vectors.shape[1] != directions.dimension:
                raise MicroscopeError(f"pool embeddings have dimension {vectors.shape[1]} but the directions of "
                                      f"{request.layer} have {directions.dimension}")
            session.commit()
            plan = {"model": request.model_id, "layer": request.layer, "pool": pool.id,
                    "texts_sha": texts_sha256(pool.texts), "terms": request.terms,
                    "normalisation": request.normalisation, "directions": directions.blob_uri}
            dataset_id = directions.dataset_id
            total = len(_units_in(session, blobs, layer_row.id, dataset_id).units)
        summary: dict[str, Any] = {"model": request.model_id, "layer": request.layer, "pool": request.pool_id,
                                   "terms": request.terms, "dataset": dataset_id, "engine": request.engine}
        with driver_lock(engine, f"decompose of {request.model_id}/{request.layer}"):
            job = _plan(sessions, states, request, dataset_id, plan, total)
            if job is None:
                summary.update(status="already done", seconds=round(time.monotonic() - started, 2))
                return summary
            total = job.total_items
            task = DecomposeTask(store, request, dataset_id, plan, request.threads or torch.get_num_threads())
            results = run_with_progress(run_decompose_pass, [task], request, opened, [job.id], total=total, done=job.cursor,
                                        desc=f"decompose {request.layer}", unit="unit", show=show_progress)
        summary.update(status="done", units=total, **results[0], seconds=round(time.monotonic() - started, 2))
        return summary


def _units_in(session, blobs: BlobStore, layer_id: int, dataset_id: str):
    from store.directions import load_layer_directions

    found = load_layer_directions(session, blobs, layer_id, dataset_id)
    if found is None:
        raise MicroscopeError("the layer's directions are gone; run the directions job again")
    return found


def _plan(sessions, states: StateStore, request: DecomposeRequest, dataset_id: str, plan: dict, total: int):
    """The layer's job, reset when it was planned otherwise; None when it is done as asked."""
    with sessions() as session:
        found = repository.find_jobs(session, KIND, request.model_id, layer=request.layer, dataset_id=dataset_id)
        job = found[0] if found else repository.ensure_job(session, KIND, request.model_id, layer=request.layer,
                                                          dataset_id=dataset_id, total_items=total)
        more = resume_or_start_over(session, states, job, stored_plan(states, job.state_uri), plan, restart=request.restart,
                                    total=total)
        session.commit()
        if not more:
            return None
        return repository.find_jobs(session, KIND, request.model_id, layer=request.layer, dataset_id=dataset_id)[0]


def run_decompose_pass(task: DecomposeTask, *, progress: Progress | None = None) -> dict:
    """Run (or resume) the decomposition pass of `task`; usable in-process and as a Ray task."""
    set_threads(task.threads)
    request = task.request
    engine, sessions = sessions_for(task.store)
    blobs = BlobStore(task.store.blob_url)
    try:
        with sessions() as session:
            job = repository.find_jobs(session, KIND, request.model_id, layer=request.layer, dataset_id=task.dataset_id)[0]
            layer_row = repository.get_layer(session, request.model_id, request.layer)
            directions = _units_in(session, blobs, layer_row.id, task.dataset_id)
            pool, vectors = _pool_dictionary_source(session, blobs, request)
            session.commit()
        with claimed(sessions, {request.layer: job}, KIND) as rows:
            states = StateStore(task.store.states)
            plan_uri = states.save(f"{KIND}-{job.id}-plan", {}, {"plan": task.plan})
            work = _DecomposePass(task, layer_row.id, directions, list(pool.texts), vectors, plan_uri)
            result = run_pass(sessions, work, rows, len(directions.units), Cadence(every=1), progress)
        return {"units_decomposed": result.items, "median_score": work.median_score()}
    finally:
        engine.dispose()


class _DecomposePass:
    """The loop's work: items are the direction set's units; each span is decomposed and its
    rows go into the span's checkpoint transaction. The row's state file holds only the plan."""

    def __init__(self, task: DecomposeTask, layer_id: int, directions, texts: list[str], vectors: np.ndarray,
                 plan_uri: str) -> None:
        self.task, self.request, self.layer_id = task, task.request, layer_id
        self.directions, self.texts, self.plan_uri = directions, texts, plan_uri
        device = torch.device(self.request.device)
        self.dictionary = text_dictionary(torch.from_numpy(np.asarray(vectors, dtype=np.float32)),
                                          self.request.normalisation).to(device)
        self.pending: list[dict[str, Any]] = []
        self.pending_units: list[int] = []
        self.scores: list[float] = []

    def batches(self, start: int):
        return spans(start, len(self.directions.units), self.request.units_per_batch)

    def compute(self, batch, names: list[str]) -> None:
        targets = torch.from_numpy(np.asarray(self.directions.directions[batch.start:batch.stop], dtype=np.float32))
        codes = omp(self.dictionary, targets, self.request.terms)
        self.pending_units = [int(u) for u in self.directions.units[batch.start:batch.stop]]
        self.pending = []
        for b, unit in enumerate(self.pending_units):
            score = float(codes.scores[b])
            if int(codes.counts[b]) > 0:
                self.scores.append(score)
            for rank, (atom, coefficient) in enumerate(codes.ranked(b)):
                self.pending.append({"unit": unit, "rank": rank, "text": self.texts[atom],
                                     "coefficient": float(coefficient), "score": score})

    def save(self, name: str, cursor: int, done: bool) -> Checkpoint:
        from store.text_pools import layer_unit_ids, replace_decompositions

        units, rows, pool_id, layer_id = self.pending_units, self.pending, self.request.pool_id, self.layer_id

        def write(session) -> None:
            ids = layer_unit_ids(session, layer_id)
            replace_decompositions(session, pool_id, [ids[u] for u in units],
                                   [{"unit_id": ids[row["unit"]], **{k: v for k, v in row.items() if k != "unit"}}
                                    for row in rows])

        return Checkpoint(self.plan_uri, write)

    def committed(self, name: str, checkpoint: Checkpoint) -> None:
        self.pending, self.pending_units = [], []

    def median_score(self) -> float | None:
        return round(float(np.median(self.scores)), 4) if self.scores else None


# The toy models' world pool is 389 words in a 128-dimensional space: 32 terms fit almost any
# direction (reconstruction ~0.98) and their coefficients stop meaning much. 8 terms with the
# authors' per-dimension normalisation name the colour units' colour in their top 5 terms (of
# the 6 that meet figures.json's bar: toy-rn 5, toy-vit 4; with 32 unit-normalised terms 1 and
# 0), measured on 2,000 world images with tests/text_semantics.py.
DEMO_TERMS = 8
DEMO_NORMALISATION = "per-dimension"


def decompose_layers(store: StoreConfig, layers: dict[str, Sequence[str]], *, pool: str = "world",
                     terms: int = DEMO_TERMS, normalisation: str = DEMO_NORMALISATION,
                     loaded: dict[str, Any] | None = None, device: str = "cpu",
                     show_progress: bool = True) -> Iterator[str]:
    """What the demo runs after the directions job: the world pool (added when missing) and
    every named layer's decompositions over it ({model: [layers]}), one line of news per
    layer. A layer without directions is said and skipped, not an error."""
    from precompute.text_pools import pool_texts
    from store.text_pools import add_pool

    engine, sessions = sessions_for(store)
    try:
        with sessions() as session:
            world = pool_texts("world")
            _, created = add_pool(session, pool, world.texts, world.source)
            session.commit()
    finally:
        engine.dispose()
    yield f"text pool {pool}: {len(world.texts)} texts, {world.description}{'' if created else ' (already there)'}"
    for model_id, names in layers.items():
        for layer in names:
            request = DecomposeRequest(model_id=model_id, layer=layer, pool_id=pool, terms=terms,
                                       normalisation=normalisation, device=device)
            try:
                summary = run_decompose(store, request, show_progress=show_progress,
                                        loaded=(loaded or {}).get(model_id))
            except MicroscopeError as error:
                yield f"{model_id} {layer}: no decompositions ({error})"
                continue
            yield (f"{model_id} {layer}: decompositions over {pool}, {terms} terms "
                   f"(median reconstruction score {summary.get('median_score')}; {summary['status']})")
