"""`microscope precompute directions`: every neuron's direction in the joint image-text space
(the second-order lens, `precompute.lens`), its mean effect and significance threshold, over a
dataset; resumable, on one machine or a Ray cluster.

Two passes of the job loop over the dataset (`precompute.directions`), each cut into
`shards` contiguous ranges, each (layer, shard) a job row; one forward pass per batch serves
every requested layer:

1. `directions-mean`: each shard sums its images' effects; the shards' sums, merged in shard
   order, give b_n.
2. `directions-top`: each shard keeps, per neuron, the `top` images with the largest
   ||phi_n - b_n|| and their centred effects; it starts from the merged means of pass 1.
3. `directions` (one row per layer): merges the shards' tops (exactly), takes each neuron's
   first principal component and threshold, and writes the layer's blob and `direction_sets`
   row (`store.directions.save_layer_directions`) in the transaction that marks it done.

Every checkpoint saves each row's accumulator and commits the cursors with it, so a killed run,
re-run, ends with exactly the blob an uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from store import repository
from store.blobs import BlobStore
from precompute.directions import TOP_IMAGES, MeanEffects, TopEffects, directions
from precompute.errors import MicroscopeError
from precompute.lens import layer_effects, lens_paths
from precompute.loader import iter_batches
from workers.engines import ENGINES, Progress, StoreConfig, sessions_for, set_threads
from workers.locks import driver_lock
from workers.loop import (
    AccumulatorPass, Cadence, Checkpoint, claimed, refuse_other_plan, release_orphans, run_pass, run_shards, shard_bounds, spans,
    stored_plan,
)
from workers.state import StateStore

MEAN_KIND = "directions-mean"
TOP_KIND = "directions-top"
KIND = "directions"
PHASES = {"mean": MEAN_KIND, "top": TOP_KIND}


@dataclass(frozen=True)
class DirectionsRequest:
    model_id: str
    dataset_id: str
    layers: tuple[str, ...]
    top: int = TOP_IMAGES
    limit: int | None = None  # only the dataset's first `limit` images
    shards: int = 1
    batch_size: int = 32
    device: str = "cpu"
    engine: str = "local"
    restart: bool = False
    checkpoint_every: int = 20  # batches between checkpoints (whichever comes first ...)
    checkpoint_seconds: float = 60.0  # ... or seconds
    threads: int = 0  # torch threads in each shard worker; 0 = this process's count
    loader_threads: int = 1
    ray_address: str | None = None

    def validate(self) -> None:
        if not self.layers:
            raise MicroscopeError("name at least one --layer")
        for name, value in (("--batch-size", self.batch_size), ("--shards", self.shards), ("--top", self.top),
                            ("--checkpoint-every", self.checkpoint_every)):
            if value < 1:
                raise MicroscopeError(f"{name} must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise MicroscopeError("--limit must be at least 1")
        if self.engine not in ENGINES:
            raise MicroscopeError(f"--engine must be one of {', '.join(ENGINES)}")


@dataclass(frozen=True)
class DirectionsTask:
    store: StoreConfig
    request: DirectionsRequest
    phase: str  # "mean" | "top"
    shard: int
    start: int  # first dataset position of the shard
    stop: int
    count: int  # images of the shard
    layers: tuple[str, ...]  # layers whose row at this phase and shard is not done
    threads: int


def _plan_record(request: DirectionsRequest, layer: str, shards: int, fingerprint: str, paths: str, count: int) -> dict:
    return {"model": request.model_id, "dataset": request.dataset_id, "layer": layer, "top": request.top,
            "batch_size": request.batch_size, "shards": shards, "images": count, "dataset_fingerprint": fingerprint,
            "paths": paths}


def _fingerprint(items) -> str:
    digest = hashlib.sha256()
    for position, _, sha, _ in items:
        digest.update(f"{position}:{sha}\n".encode())
    return digest.hexdigest()[:32]


def _rows(session, request: DirectionsRequest, kind: str, layer: str):
    return repository.find_jobs(session, kind, request.model_id, layer=layer, dataset_id=request.dataset_id)


def _merged_mean(states: StateStore, mean_rows) -> MeanEffects:
    return MeanEffects.merge([MeanEffects.from_state(*states.load(row.state_uri)) for row in mean_rows])


# -- shard worker -----------------------------------------------------------------------------------
def run_directions_shard(task: DirectionsTask, *, loaded=None, progress: Progress | None = None) -> dict:
    """Run (or resume) one shard of one pass for every layer in `task.layers`. Usable in-process
    and as a Ray task: everything it needs comes from `task`."""
    from store.loading import load_registered

    set_threads(task.threads)
    request = task.request
    kind = PHASES[task.phase]
    engine, sessions = sessions_for(task.store)
    try:
        with sessions() as session:
            jobs = {}
            for layer in task.layers:
                job = _rows(session, request, kind, layer)[task.shard]
                if job.state != "done":
                    jobs[layer] = job
            means = {layer: _rows(session, request, MEAN_KIND, layer) for layer in jobs} if task.phase == "top" else {}
        if not jobs:
            return {"phase": task.phase, "shard": task.shard, "images": 0, "skipped": 0}
        states = StateStore(task.store.states)
        with claimed(sessions, jobs, kind) as rows:
            with sessions() as session:
                items = repository.dataset_items(session, request.dataset_id, task.start, task.stop)
                if loaded is None:
                    loaded = load_registered(session, request.model_id, device=request.device)
            if len(items) != task.count:
                raise MicroscopeError(f"dataset '{request.dataset_id}' changed since the plan; re-run with --restart")
            work = _ShardPass(task, rows, items, loaded, states, BlobStore(task.store.blob_url), means)
            result = run_pass(sessions, work, rows, len(items), Cadence(request.checkpoint_every, request.checkpoint_seconds),
                              progress)
        return {"phase": task.phase, "shard": task.shard, "images": result.items, "skipped": result.skipped}
    finally:
        engine.dispose()


class _ShardPass(AccumulatorPass):
    """The loop's work for one shard of one pass: items are the shard's dataset positions, each
    layer's state its accumulator, saved whole at every checkpoint."""

    def __init__(self, task: DirectionsTask, jobs: dict, items, loaded, states: StateStore, blobs: BlobStore,
                 means: dict) -> None:
        self.task, self.loaded, self.states, self.blobs = task, loaded, states, blobs
        self.kind = PHASES[task.phase]
        self.job_ids = {layer: job.id for layer, job in jobs.items()}
        self.current_uri = {layer: job.state_uri for layer, job in jobs.items()}
        self.accumulators: dict[str, Any] = {}
        self.plans: dict[str, dict] = {}
        for layer, job in jobs.items():
            if task.phase == "mean":
                arrays, meta = states.load(job.state_uri)
                self.accumulators[layer] = MeanEffects.from_state(arrays, meta)
                self.plans[layer] = meta["plan"]
            elif job.state_uri:
                arrays, meta = states.load(job.state_uri)
                self.accumulators[layer] = TopEffects.from_state(arrays, meta)
                self.plans[layer] = meta["plan"]
            else:  # the pass starts from the merged means of pass 1
                merged = _merged_mean(states, means[layer])
                self.accumulators[layer] = TopEffects(merged.mean(), task.request.top)
                self.plans[layer] = states.meta(means[layer][0].state_uri)["plan"]
        self.pairs = [(item[0], item[3]) for item in items]

    def batches(self, start: int):
        request = self.task.request
        return iter_batches(self.pairs, request.batch_size, self.blobs.get, self.loaded.preprocess, start=start,
                            threads=request.loader_threads)

    def compute(self, batch, layers: list[str]) -> None:
        if not (batch.positions.numel() and layers):
            return
        effects = layer_effects(self.loaded, batch.images, layers)
        for layer in layers:
            values = effects[layer].values
            if self.task.phase == "mean":
                self.accumulators[layer].update(values)
            else:
                self.accumulators[layer].update(values, batch.positions.numpy())


# -- the write ---------------------------------------------------------------------------------------
class _LayerWrite:
    """The loop's work for a layer's write: one item, the whole layer, in one transaction."""

    def __init__(self, request: DirectionsRequest, layer: str, layer_id: int, tops: list, blobs: BlobStore,
                 paths: str, image_count: int) -> None:
        self.request, self.layer, self.layer_id, self.tops, self.blobs, self.paths = (
            request, layer, layer_id, tops, blobs, paths)
        self.image_count = image_count
        self.value = None

    def batches(self, start: int):
        return spans(start, 1, 1)

    def compute(self, batch, names: list[str]) -> None:
        from store.directions import LayerDirections

        top = TopEffects.merge(self.tops)
        vectors, thresholds = directions(top)
        self.value = LayerDirections(units=np.arange(top.units, dtype=np.int64), directions=vectors,
                                     mean_effects=top.mean, thresholds=thresholds, paths=self.paths,
                                     dataset_id=self.request.dataset_id, image_count=self.image_count)

    def save(self, name: str, cursor: int, done: bool) -> Checkpoint:
        from store.directions import save_layer_directions

        value, self.value = self.value, None
        if value is None:
            return Checkpoint(None)
        return Checkpoint(None, lambda session: save_layer_directions(session, self.blobs, self.layer_id, value))

    def committed(self, name: str, checkpoint: Checkpoint) -> None:
        pass


def _write_layer(sessions, states: StateStore, blobs: BlobStore, request: DirectionsRequest, layer: str,
                 progress: Progress | None) -> bool:
    with sessions() as session:
        write = _rows(session, request, KIND, layer)[0]
        if write.state == "done":
            return False
        tops = _rows(session, request, TOP_KIND, layer)
        means = _rows(session, request, MEAN_KIND, layer)
        if any(row.state != "done" for row in tops + means):
            raise MicroscopeError(f"the passes over {layer} are not all done; re-run to finish them")
        layer_id = repository.get_layer(session, request.model_id, layer).id
    with claimed(sessions, {layer: write}, KIND) as rows:
        parts = []
        for row in tops:
            arrays, meta = states.load(row.state_uri)
            parts.append(TopEffects.from_state(arrays, meta))
        plan = states.meta(tops[0].state_uri)["plan"]
        count = _merged_mean(states, means).count
        run_pass(sessions, _LayerWrite(request, layer, layer_id, parts, blobs, plan["paths"], count), rows, 1,
                 Cadence(every=1), progress)
    return True


def _cleanup(sessions, states: StateStore, request: DirectionsRequest) -> None:
    """Once a layer's directions are written, the (large) states of its second pass are no longer
    needed; the first pass's final states stay: they record the plan, for a re-run to check."""
    with sessions() as session:
        for layer in request.layers:
            if not any(row.state == "done" for row in _rows(session, request, KIND, layer)):
                continue
            for row in _rows(session, request, TOP_KIND, layer):
                states.cleanup(f"{row.kind}-{row.id}-", set())
            for row in _rows(session, request, MEAN_KIND, layer):
                states.cleanup(f"{row.kind}-{row.id}-", {row.state_uri})


# -- planning -----------------------------------------------------------------------------------------
def _plan(sessions, states: StateStore, loaded, request: DirectionsRequest, items) -> list[str]:
    """Create or check every requested layer's rows. Returns the layers still to do."""
    bounds = shard_bounds(len(items), request.shards)
    fingerprint = _fingerprint(items)
    todo = []
    with sessions() as session:
        for layer in request.layers:
            paths = lens_paths(loaded, layer)
            rows = {kind: _rows(session, request, kind, layer) for kind in (MEAN_KIND, TOP_KIND, KIND)}
            if request.restart and any(rows.values()):
                for row in rows[MEAN_KIND] + rows[TOP_KIND]:
                    states.cleanup(f"{row.kind}-{row.id}-", set())
                repository.delete_jobs(session, [row.id for kind_rows in rows.values() for row in kind_rows])
                rows = {kind: [] for kind in rows}
            wanted = _plan_record(request, layer, len(bounds), fingerprint, paths, len(items))
            if rows[MEAN_KIND]:
                refuse_other_plan(f"directions of {layer} on '{request.dataset_id}'",
                                  stored_plan(states, rows[MEAN_KIND][0].state_uri), wanted,
                                  same_shards=len(rows[MEAN_KIND]) == len(bounds))
                if rows[KIND] and rows[KIND][0].state == "done":
                    continue
                todo.append(layer)
                continue
            spec = loaded.spec.layer(layer)
            units, dim = spec.units, loaded.spec.embed_dim
            for shard, (start, stop) in enumerate(bounds):
                job = repository.ensure_job(session, MEAN_KIND, request.model_id, layer=layer,
                                            dataset_id=request.dataset_id, shard=shard, shard_count=len(bounds),
                                            total_items=stop - start)
                arrays, meta = MeanEffects(units, dim).state()
                meta["plan"] = wanted
                uri = states.save(f"{MEAN_KIND}-{job.id}-{0:010d}", arrays, meta)
                repository.checkpoint_job(session, job.id, 0, uri, total_items=stop - start)
                repository.ensure_job(session, TOP_KIND, request.model_id, layer=layer, dataset_id=request.dataset_id,
                                      shard=shard, shard_count=len(bounds), total_items=stop - start)
            repository.ensure_job(session, KIND, request.model_id, layer=layer, dataset_id=request.dataset_id,
                                  total_items=1)
            todo.append(layer)
        session.commit()
    return todo


def _release_orphans(sessions, request: DirectionsRequest) -> None:
    with sessions() as session:
        release_orphans(session, [row for layer in request.layers for kind in (MEAN_KIND, TOP_KIND, KIND)
                                  for row in _rows(session, request, kind, layer)])
        session.commit()


def _run_phase(store, sessions, request: DirectionsRequest, phase: str, layers: list[str], items, loaded,
               show_progress: bool) -> list[dict]:
    kind = PHASES[phase]
    threads = request.threads or torch.get_num_threads()
    tasks, job_ids = [], []
    remaining = already = 0
    with sessions() as session:
        for shard, (start, stop) in enumerate(shard_bounds(len(items), request.shards)):
            open_layers, cursors = [], []
            for layer in layers:
                job = _rows(session, request, kind, layer)[shard]
                job_ids.append(job.id)
                if job.state != "done":
                    open_layers.append(layer)
                    cursors.append(job.cursor)
            if open_layers:
                tasks.append(DirectionsTask(store, request, phase, shard, items[start][0], items[stop - 1][0] + 1,
                                            stop - start, tuple(open_layers), threads))
                remaining += stop - start
                already += min(cursors)
    if not tasks:
        return []
    label = "mean effects" if phase == "mean" else "top effects"
    progress = Progress(remaining, already, f"directions {label}", "img", show_progress)
    try:
        return run_shards(run_directions_shard, tasks, engine=request.engine, progress=progress, sessions=sessions,
                          job_ids=job_ids, local_options={"loaded": loaded, "progress": progress},
                          rows_per_item=len(layers), ray_address=request.ray_address, device=request.device)
    finally:
        progress.close()


# -- driver ---------------------------------------------------------------------------------------------
def run_directions(store: StoreConfig, request: DirectionsRequest, *, show_progress: bool = True, loaded=None) -> dict:
    """Plan, run (local or Ray) and write the directions of every requested layer; resumes
    whatever a killed run left."""
    from store.loading import load_registered, require_layers, require_model

    request.validate()
    request = replace(request, layers=tuple(dict.fromkeys(request.layers)))
    started = time.monotonic()
    engine, sessions = sessions_for(store)
    try:
        with sessions() as session:
            model = require_model(session, request.model_id)
            if repository.get_dataset(session, request.dataset_id) is None:
                known = ", ".join(d.id for d in repository.list_datasets(session)) or "none"
                raise MicroscopeError(f"dataset '{request.dataset_id}' is not registered (registered: {known})")
            require_layers(session, model, request.layers)
            items = repository.dataset_items(session, request.dataset_id)
            if request.limit is not None:
                items = items[: request.limit]
            if not items:
                raise MicroscopeError(f"dataset '{request.dataset_id}' has no images")
            if loaded is None:
                loaded = load_registered(session, request.model_id, device=request.device)
        for layer in request.layers:
            lens_paths(loaded, layer)  # a layer the lens cannot serve fails before any work
        states = StateStore(store.states)
        blobs = BlobStore(store.blob_url)
        summary: dict[str, Any] = {"model": request.model_id, "dataset": request.dataset_id, "layers": list(request.layers),
                                   "images": len(items), "engine": request.engine}
        with driver_lock(engine, f"directions of {request.model_id} on {request.dataset_id}"):
            _release_orphans(sessions, request)
            todo = _plan(sessions, states, loaded, request, items)
            if not todo:
                _cleanup(sessions, states, request)
                summary.update(status="already done", seconds=round(time.monotonic() - started, 2))
                return summary
            passes = []
            for phase in ("mean", "top"):
                passes += _run_phase(store, sessions, request, phase, todo, items, loaded, show_progress)
            written = [layer for layer in todo if _write_layer(sessions, states, blobs, request, layer, None)]
            _cleanup(sessions, states, request)
        summary.update(status="done", layers_written=written,
                       processed=sum(p["images"] for p in passes), skipped=max([p["skipped"] for p in passes] + [0]),
                       seconds=round(time.monotonic() - started, 2))
        return summary
    finally:
        engine.dispose()


# -- the demo -------------------------------------------------------------------------------------------
DEMO_DIRECTIONS_IMAGES = 1000  # the demo dataset's first images: enough for 100 per neuron, quick on 2 cores


def demo_layers(loaded) -> tuple[str, ...]:
    """The layers the demo gives directions: a ResNet's final stage; every MLP layer of a ViT
    (the earlier ones with the second-order path, the last one of a mean-pooled tower direct)."""
    from precompute.lens import LensError

    if loaded.spec.family == "resnet":
        return (loaded.spec.final_layer.name,)
    layers = []
    for spec in loaded.spec.layers:
        if spec.name.endswith(".mlp"):
            try:
                lens_paths(loaded, spec.name)
            except LensError:  # the last MLP of a class-token tower
                continue
            layers.append(spec.name)
    return tuple(layers)


def run_demo_directions(store: StoreConfig, loaded_models: dict, dataset_id: str, *,
                        images: int = DEMO_DIRECTIONS_IMAGES, device: str = "cpu", show_progress: bool = True):
    """Directions of `demo_layers` for every model (one pass serves all of a model's layers);
    yields one line per model. Resumable and idempotent like every job."""
    for model_id, loaded in loaded_models.items():
        layers = demo_layers(loaded)
        request = DirectionsRequest(model_id=model_id, dataset_id=dataset_id, layers=layers, limit=images,
                                    batch_size=64, device=device)
        summary = run_directions(store, request, show_progress=show_progress, loaded=loaded)
        yield f"{model_id}: neuron directions of {len(layers)} layers over {images} images ({summary})"
