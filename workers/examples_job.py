"""`microscope precompute examples`: dataset examples, statistics and conditional-probability
samples of every unit of some layers, resumable, on one machine or a Ray cluster.

Plan. The dataset's positions are cut into `shards` contiguous ranges. Every (layer, shard)
is a job row (kind `examples`); every layer also has one `examples-merge` job that writes its
results. A new plan fixes each layer's histogram/sample bins from a calibration batch (the
first batch of the dataset) and writes every shard's empty accumulator as its initial state,
all in one transaction, so resumed and remote shards always start from the same bins.

Shards. One streaming pass per shard serves all requested layers at once: the model runs
once per batch and every layer's accumulator takes its slice. Every `checkpoint_every`
batches (or `checkpoint_seconds`), each layer's accumulator is saved (workers.state) and the
jobs' cursor and state URI are committed together; a killed shard re-run loads that state
and continues at the cursor with exactly the same batches (a batch is a fixed range of
positions), so it ends bit-identical to an uninterrupted run. The same shard function runs
in-process (`--engine local`) or as a Ray task (`--engine ray`).

Merge. When all shards of a layer are done, their accumulators merge in shard order (top-k
exactly, moments in a fixed order) and the results are written in chunks of units, each
chunk in one transaction with the merge job's cursor: examples with crops of the region
around the maximum, buckets, and unit statistics with the histogram.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from store import repository
from store.blobs import BlobStore
from precompute import keys as K
from precompute.architectures import LayerSpec
from precompute.crops import DEFAULT_CROP_SIZE, cell_box, crop, model_view, png_bytes
from precompute.errors import MicroscopeError
from precompute.examples import ExampleParams, LayerAccumulator, calibrated_range, merge_all, ranking_values
from precompute.loader import decode_image, iter_batches
from workers.engines import ENGINES, Progress, StoreConfig, done_items, run_on_ray, sessions_for, set_threads
from workers.locks import driver_lock
from workers.state import StateStore

KIND = "examples"
MERGE_KIND = "examples-merge"


@dataclass(frozen=True)
class ExamplesRequest:
    model_id: str
    dataset_id: str
    layers: tuple[str, ...]
    params: ExampleParams = field(default_factory=ExampleParams)
    shards: int = 1
    batch_size: int = 64
    device: str = "cpu"
    engine: str = "local"
    restart: bool = False
    checkpoint_every: int = 50  # batches between checkpoints (whichever comes first ...)
    checkpoint_seconds: float = 60.0  # ... or seconds
    crop_size: int = DEFAULT_CROP_SIZE
    threads: int = 0  # torch threads in each shard worker; 0 = this process's count
    loader_threads: int = 1
    ray_address: str | None = None

    def validate(self) -> None:
        if not self.layers:
            raise MicroscopeError("name at least one --layer")
        for name, value in (("--batch-size", self.batch_size), ("--shards", self.shards), ("--crop-size", self.crop_size)):
            if value < 1:
                raise MicroscopeError(f"{name} must be at least 1")
        if self.engine not in ENGINES:
            raise MicroscopeError(f"--engine must be one of {', '.join(ENGINES)}")


@dataclass(frozen=True)
class ShardTask:
    store: StoreConfig
    request: ExamplesRequest
    shard: int
    start: int  # first position of the shard
    stop: int
    layers: tuple[str, ...]  # layers whose job at this shard is not done yet
    threads: int


def _plan_record(request: ExamplesRequest, layer: str, shards: int, fingerprint: str) -> dict[str, Any]:
    """What a layer's jobs were planned with; a re-run must match it to resume them."""
    return {
        "model": request.model_id,
        "dataset": request.dataset_id,
        "layer": layer,
        "params": request.params.as_dict(),
        "batch_size": request.batch_size,
        "shards": shards,
        "dataset_fingerprint": fingerprint,
    }


def _fingerprint(items: list[tuple[int, int, str, str]]) -> str:
    digest = hashlib.sha256()
    for position, _, sha, _ in items:
        digest.update(f"{position}:{sha}\n".encode())
    return digest.hexdigest()[:32]


def _shard_bounds(count: int, shards: int) -> list[tuple[int, int]]:
    shards = min(shards, count)
    return [(s * count // shards, (s + 1) * count // shards) for s in range(shards)]


def _job_at(session, request: ExamplesRequest, layer: str, shard: int):
    jobs = [job for job in repository.find_jobs(session, KIND, request.model_id, layer=layer, dataset_id=request.dataset_id)
            if job.shard == shard]
    if not jobs:
        raise MicroscopeError(f"no examples job for {layer} shard {shard}; was the plan deleted? re-run with --restart")
    return jobs[0]


# -- shard worker -----------------------------------------------------------------------------------
def run_shard(task: ShardTask, *, loaded=None, calibration: dict | None = None, progress: Progress | None = None) -> dict:
    """Run (or resume) one shard for every layer in `task.layers`; returns a small summary.

    Usable in-process and as a Ray task: everything it needs comes from `task`."""
    from store.loading import load_registered

    set_threads(task.threads)
    request = task.request
    engine, sessions = sessions_for(task.store)
    states = StateStore(task.store.states)
    blobs = BlobStore(task.store.blob_url)
    jobs: dict[str, Any] = {}
    try:
        with sessions() as session:
            for layer in task.layers:
                job = _job_at(session, request, layer, task.shard)
                if job.state == "done":
                    continue
                claimed = repository.claim_job(session, job_id=job.id)
                if claimed is None:
                    raise MicroscopeError(f"examples job {job.id} ({layer}, shard {task.shard}) is running elsewhere")
                jobs[layer] = claimed
            session.commit()
            if not jobs:
                return {"shard": task.shard, "images": 0, "skipped": 0}
            items = repository.dataset_items(session, request.dataset_id, task.start, task.stop)
            if loaded is None:
                loaded = load_registered(session, request.model_id, device=request.device)
        try:
            return _stream_shard(task, jobs, items, loaded, states, blobs, sessions, calibration, progress)
        except BaseException as error:
            with sessions() as session:
                for job in jobs.values():
                    repository.finish_job(session, job.id, error=f"{type(error).__name__}: {error}"[:2000])
                session.commit()
            raise
    finally:
        engine.dispose()


def _stream_shard(task, jobs, items, loaded, states, blobs, sessions, calibration, progress) -> dict:
    request = task.request
    if len(items) != task.stop - task.start:
        raise MicroscopeError(f"dataset '{request.dataset_id}' changed since the plan; re-run with --restart")
    device = loaded.device
    accumulators: dict[str, LayerAccumulator] = {}
    plans: dict[str, dict] = {}
    cursors: dict[str, int] = {}
    current_uri: dict[str, str] = {}
    for layer, job in jobs.items():
        arrays, meta = states.load(job.state_uri)
        accumulators[layer] = LayerAccumulator.from_state(arrays, meta, device)
        plans[layer] = meta["plan"]
        cursors[layer] = job.cursor
        current_uri[layer] = job.state_uri

    positions = np.array([item[0] for item in items], dtype=np.int64)
    sample_keys = torch.from_numpy(K.sample_keys([item[2] for item in items], positions))
    pairs = [(item[0], item[3]) for item in items]
    total = len(items)
    seen = skipped = 0

    def checkpoint(layers: list[str], done: bool) -> None:
        uris = {}
        for layer in layers:
            arrays, meta = accumulators[layer].state()
            meta["plan"] = plans[layer]
            uris[layer] = states.save(f"{KIND}-{jobs[layer].id}-{cursors[layer]:010d}", arrays, meta)
        with sessions() as session:
            for layer in layers:
                repository.checkpoint_job(session, jobs[layer].id, cursors[layer], uris[layer], done=done, total_items=total)
            session.commit()
        for layer in layers:
            if current_uri[layer] != uris[layer]:
                states.delete(current_uri[layer])
            current_uri[layer] = uris[layer]

    finished = [layer for layer in jobs if cursors[layer] >= total]
    if finished:  # state at the end already saved but not marked done
        checkpoint(finished, done=True)
    open_layers = [layer for layer in jobs if cursors[layer] < total]
    if not open_layers:
        return {"shard": task.shard, "images": 0, "skipped": 0}
    begin = min(cursors[layer] for layer in open_layers)
    last = time.monotonic()
    since = 0
    for batch in iter_batches(pairs, request.batch_size, blobs.get, loaded.preprocess, start=begin,
                              threads=request.loader_threads):
        active = [layer for layer in open_layers if cursors[layer] <= batch.start]
        if batch.positions.numel() and active:
            reuse = calibration is not None and torch.equal(calibration["positions"], batch.positions)
            if reuse and all(layer in calibration["values"] for layer in active):
                values = calibration["values"]
            else:
                values = ranking_values(loaded, batch.images, active)
            keys = sample_keys[batch.start : batch.stop][torch.as_tensor(batch.index) - batch.start]
            for layer in active:
                accumulators[layer].update(values[layer][0], values[layer][1], batch.positions, keys)
        for layer in active:
            accumulators[layer].skipped += len(batch.skipped)
            cursors[layer] = batch.stop
        seen += batch.stop - batch.start
        skipped += len(batch.skipped)
        if progress is not None:
            progress.advance(batch.stop - batch.start, len(batch.skipped))
        since += 1
        done = batch.stop >= total
        if done or since >= request.checkpoint_every or time.monotonic() - last >= request.checkpoint_seconds:
            checkpoint(active if not done else open_layers, done)
            since, last = 0, time.monotonic()
    return {"shard": task.shard, "images": seen, "skipped": skipped}


def _ray_shard(task: ShardTask) -> dict:
    return run_shard(task)


# -- planning -----------------------------------------------------------------------------------------
def _calibrate(loaded, request: ExamplesRequest, items, blobs: BlobStore, layers: list[str]) -> dict:
    """Ranking values of the dataset's first non-empty batch, for the fixed bins."""
    pairs = [(item[0], item[3]) for item in items]
    for batch in iter_batches(pairs, request.batch_size, blobs.get, loaded.preprocess):
        if batch.positions.numel():
            return {"positions": batch.positions, "start": batch.start,
                    "values": ranking_values(loaded, batch.images, layers)}
    raise MicroscopeError(f"none of the images of dataset '{request.dataset_id}' could be read")


def _plan(sessions, states: StateStore, blobs: BlobStore, loaded, request: ExamplesRequest, items) -> tuple[list[str], dict | None]:
    """Create or check the jobs of every requested layer. Returns (layers still to do, the
    calibration batch if one was computed)."""
    count = len(items)
    bounds = _shard_bounds(count, request.shards)
    fingerprint = _fingerprint(items)
    todo: list[str] = []
    new: list[str] = []
    with sessions() as session:
        for layer in request.layers:
            jobs = repository.find_jobs(session, KIND, request.model_id, layer=layer, dataset_id=request.dataset_id)
            merge = repository.find_jobs(session, MERGE_KIND, request.model_id, layer=layer, dataset_id=request.dataset_id)
            if request.restart and (jobs or merge):
                for job in jobs:
                    states.delete(job.state_uri)
                    states.cleanup(f"{KIND}-{job.id}-", set())
                repository.delete_jobs(session, [job.id for job in jobs + merge])
                jobs, merge = [], []
            if not jobs:
                new.append(layer)
                todo.append(layer)
                continue
            wanted = _plan_record(request, layer, len(bounds), fingerprint)
            planned = states.meta(jobs[0].state_uri)["plan"] if jobs[0].state_uri else None
            if planned != wanted or len(jobs) != len(bounds):
                differ = sorted(k for k in wanted if planned is None or planned.get(k) != wanted[k])
                raise MicroscopeError(
                    f"examples of {layer} on '{request.dataset_id}' were planned with other {', '.join(differ) or 'shards'}; "
                    "re-run with the same options, or with --restart to recompute"
                )
            if not (merge and merge[0].state == "done"):
                todo.append(layer)
        session.commit()

    calibration = None
    if new:
        calibration = _calibrate(loaded, request, items, blobs, new)
        with sessions() as session:
            for layer in new:
                spec = loaded.spec.layer(layer)
                low, high = calibrated_range(calibration["values"][layer][0])
                plan = _plan_record(request, layer, len(bounds), fingerprint)
                for shard, (start, stop) in enumerate(bounds):
                    job = repository.ensure_job(session, KIND, request.model_id, layer=layer, dataset_id=request.dataset_id,
                                                shard=shard, shard_count=len(bounds), total_items=stop - start)
                    acc = LayerAccumulator(spec.units, request.params, low, high, spec.spatial is not None)
                    arrays, meta = acc.state()
                    meta["plan"] = plan
                    uri = states.save(f"{KIND}-{job.id}-{0:010d}", arrays, meta)
                    repository.checkpoint_job(session, job.id, 0, uri, total_items=stop - start)
                repository.ensure_job(session, MERGE_KIND, request.model_id, layer=layer, dataset_id=request.dataset_id,
                                      total_items=spec.units)
            session.commit()
    return todo, calibration


def _release_orphans(sessions, request: ExamplesRequest, layers: list[str]) -> None:
    """Under the driver lock no one else works on these jobs: running ones are orphans of a
    killed run, failed ones get another go. Both resume from their cursor."""
    with sessions() as session:
        ids = []
        for layer in layers:
            for kind in (KIND, MERGE_KIND):
                for job in repository.find_jobs(session, kind, request.model_id, layer=layer, dataset_id=request.dataset_id):
                    if job.state == "running":
                        ids.append(job.id)
                    elif job.state == "failed":
                        repository.reset_job(session, job.id)
        repository.release_jobs(session, ids)
        session.commit()


# -- merge and write ------------------------------------------------------------------------------------
class _Crops:
    """Crops of the model view around spatial maxima, content-addressed, each made once."""

    def __init__(self, loaded, blobs: BlobStore, spec: LayerSpec, uri_of: dict[int, str], size: int) -> None:
        self.loaded, self.blobs, self.spec, self.uri_of, self.size = loaded, blobs, spec, uri_of, size
        self.done: dict[tuple[int, int], str | None] = {}
        self.views: OrderedDict[int, Any] = OrderedDict()
        cfg = loaded.preprocess_cfg
        self.mean, self.std = cfg.get("mean", (0.0, 0.0, 0.0)), cfg.get("std", (1.0, 1.0, 1.0))

    def _view(self, position: int):
        if position in self.views:
            self.views.move_to_end(position)
            return self.views[position]
        try:
            image = decode_image(self.blobs.get(self.uri_of[position]))
            view = model_view(self.loaded.preprocess(image), self.mean, self.std)
        except Exception:  # an image that vanished or broke since the pass: no crop
            view = None
        self.views[position] = view
        if len(self.views) > 256:
            self.views.popitem(last=False)
        return view

    def uri(self, position: int, arg: int) -> str | None:
        key = (position, arg)
        if key not in self.done:
            view = self._view(position)
            if view is None:
                self.done[key] = None
            else:
                box = cell_box(self.spec, self.loaded.spec.image_size, arg)
                self.done[key] = self.blobs.put(png_bytes(crop(view, box, self.size)), ".png")
        return self.done[key]


def _finalize_layer(sessions, states: StateStore, blobs: BlobStore, loaded, request: ExamplesRequest, layer: str,
                    items, progress: Progress | None) -> dict:
    spec = loaded.spec.layer(layer)
    with sessions() as session:
        jobs = repository.find_jobs(session, KIND, request.model_id, layer=layer, dataset_id=request.dataset_id)
        merge = repository.find_jobs(session, MERGE_KIND, request.model_id, layer=layer, dataset_id=request.dataset_id)[0]
        if merge.state == "done":
            return {}
        if any(job.state != "done" for job in jobs):
            raise MicroscopeError(f"shards of {layer} are not all done; re-run to finish them")
        merge = repository.claim_job(session, job_id=merge.id)
        if merge is None:
            raise MicroscopeError(f"the merge of {layer} is running elsewhere")
        layer_row = repository.get_layer(session, request.model_id, layer)
        unit_id_of = repository.unit_ids(session, layer_row.id)
        session.commit()
    try:
        accumulators = [LayerAccumulator.from_state(*states.load(job.state_uri)) for job in jobs]
        merged = merge_all(accumulators)
        if merged.count == 0:
            raise MicroscopeError(f"none of the images of dataset '{request.dataset_id}' could be read")
        positions = np.array([item[0] for item in items], dtype=np.int64)
        key_of = np.full(int(positions.max()) + 1, K.SAMPLE_EMPTY, dtype=np.int64)
        key_of[positions] = K.sample_keys([item[2] for item in items], positions)
        image_of = np.full(int(positions.max()) + 1, -1, dtype=np.int64)
        image_of[positions] = [item[1] for item in items]
        results = merged.results(key_of)
        del accumulators, merged
        crops = _Crops(loaded, blobs, spec, {item[0]: item[3] for item in items}, request.crop_size) if spec.spatial else None
        _write_results(sessions, request, spec, results, unit_id_of, image_of, crops, merge, progress)
    except BaseException as error:
        with sessions() as session:
            repository.finish_job(session, merge.id, error=f"{type(error).__name__}: {error}"[:2000])
            session.commit()
        raise
    keep = {job.state_uri for job in jobs}
    for job in jobs:
        states.cleanup(f"{KIND}-{job.id}-", keep)
    return {"images": results.count, "skipped": results.skipped}


def _write_results(sessions, request, spec: LayerSpec, results, unit_id_of, image_of, crops, merge, progress) -> None:
    units = spec.units
    params = request.params
    per_unit = 2 * params.k + params.buckets * params.per_bucket
    chunk = max(1, min(256, 20_000 // per_unit))
    n_examples = results.top_positions.shape[1]
    measure = "spatial maximum" if spec.spatial else "value"
    pre = spec.pre_activation_module is not None
    for begin in range(merge.cursor, units, chunk):
        end = min(units, begin + chunk)
        ids = [unit_id_of[u] for u in range(begin, end)]
        examples, buckets, stats = [], [], []
        for u in range(begin, end):
            uid = unit_id_of[u]
            for sign, values, positions, args in (
                ("top", results.top_values, results.top_positions, results.top_args),
                ("bottom", results.bottom_values, results.bottom_positions, results.bottom_args),
            ):
                for rank in range(n_examples):
                    position = int(positions[u, rank])
                    arg = int(args[u, rank]) if args is not None else None
                    examples.append({
                        "unit_id": uid, "dataset_id": request.dataset_id, "sign": sign, "rank": rank,
                        "image_id": int(image_of[position]), "activation": float(values[u, rank]),
                        "position": arg, "crop_uri": crops.uri(position, arg) if crops is not None else None,
                    })
            edges = results.bucket_edges[u]
            for b in range(params.buckets):
                for slot in range(params.per_bucket):
                    position = int(results.bucket_positions[u, b, slot])
                    if position < 0:
                        continue
                    buckets.append({
                        "unit_id": uid, "dataset_id": request.dataset_id, "bucket": b, "slot": slot,
                        "low": float(edges[b]), "high": float(edges[b + 1]), "image_id": int(image_of[position]),
                        "activation": float(results.bucket_values[u, b, slot]),
                    })
            histogram = results.histogram(u) | {"dataset": request.dataset_id, "measure": measure, "pre_activation": pre}
            stats.append({
                "id": uid, "mean": float(results.mean[u]), "std": float(results.std[u]), "min": float(results.min[u]),
                "max": float(results.max[u]), "fraction_active": float(results.fraction_active[u]), "histogram": histogram,
            })
        with sessions() as session:
            repository.replace_dataset_examples(session, request.dataset_id, ids, examples)
            repository.replace_bucket_samples(session, request.dataset_id, ids, buckets)
            repository.update_unit_statistics(session, stats)
            repository.checkpoint_job(session, merge.id, end, None, done=end >= units, total_items=units)
            session.commit()
        if progress is not None:
            progress.advance(end - begin)


# -- driver ---------------------------------------------------------------------------------------------
def run_examples(store: StoreConfig, request: ExamplesRequest, *, show_progress: bool = True, loaded=None) -> dict:
    """Plan, run (local or Ray) and merge the examples pass; resumes whatever a killed run left."""
    from store.loading import load_registered, require_layers, require_model

    request.validate()
    started = time.monotonic()
    engine, sessions = sessions_for(store)
    try:
        with sessions() as session:
            model = require_model(session, request.model_id)
            dataset = repository.get_dataset(session, request.dataset_id)
            if dataset is None:
                known = ", ".join(d.id for d in repository.list_datasets(session)) or "none"
                raise MicroscopeError(f"dataset '{request.dataset_id}' is not registered (registered: {known})")
            require_layers(session, model, request.layers)
            items = repository.dataset_items(session, request.dataset_id)
            if not items:
                raise MicroscopeError(f"dataset '{request.dataset_id}' has no images")
            if loaded is None:
                loaded = load_registered(session, request.model_id, device=request.device)
        request = replace(request, layers=tuple(dict.fromkeys(request.layers)))
        states = StateStore(store.states)
        blobs = BlobStore(store.blob_url)
        summary: dict[str, Any] = {"model": request.model_id, "dataset": request.dataset_id, "layers": list(request.layers),
                                   "images": len(items), "engine": request.engine}
        with driver_lock(engine, f"examples of {request.model_id} on {request.dataset_id}"):
            _release_orphans(sessions, request, list(request.layers))
            todo, calibration = _plan(sessions, states, blobs, loaded, request, items)
            if not todo:
                summary.update(status="already done", seconds=round(time.monotonic() - started, 2))
                return summary
            pass_started = time.monotonic()
            shard_summaries = _run_shards(store, sessions, request, todo, items, loaded, calibration, show_progress)
            pass_seconds = time.monotonic() - pass_started
            progress = Progress(sum(loaded.spec.layer(l).units for l in todo), 0, "write", "unit", show_progress)
            layer_summaries = {}
            try:
                for layer in todo:
                    layer_summaries[layer] = _finalize_layer(sessions, states, blobs, loaded, request, layer, items, progress)
            finally:
                progress.close()
        processed = sum(s["images"] for s in shard_summaries)
        summary.update(
            status="done",
            processed=processed,
            skipped=max([v.get("skipped", 0) for v in layer_summaries.values()] + [0]),
            pass_seconds=round(pass_seconds, 2),
            images_per_second=round(processed / pass_seconds, 2) if pass_seconds > 0 and processed else None,
            seconds=round(time.monotonic() - started, 2),
        )
        return summary
    finally:
        engine.dispose()


def _run_shards(store, sessions, request, layers, items, loaded, calibration, show_progress) -> list[dict]:
    threads = request.threads or torch.get_num_threads()
    bounds = _shard_bounds(len(items), request.shards)
    tasks = []
    job_ids = []
    remaining = 0
    already = 0
    with sessions() as session:
        for shard, (start, stop) in enumerate(bounds):
            open_layers = []
            cursors = []
            for layer in layers:
                job = _job_at(session, request, layer, shard)
                job_ids.append(job.id)
                if job.state != "done":
                    open_layers.append(layer)
                    cursors.append(job.cursor)
            if open_layers:
                tasks.append(ShardTask(store, request, shard, items[start][0], items[stop - 1][0] + 1, tuple(open_layers), threads))
                remaining += stop - start
                already += min(cursors)
    if not tasks:
        return []
    progress = Progress(remaining, already, f"examples {','.join(layers)}", "img", show_progress)
    try:
        if request.engine == "local":
            return [run_shard(task, loaded=loaded, calibration=calibration, progress=progress) for task in tasks]
        # Ray tasks report through the jobs table at every checkpoint; all layers of a shard
        # advance together, so images done = job items done / layers.
        start_items = done_items(sessions, job_ids)

        def poll() -> None:
            progress.set(min(remaining, already + (done_items(sessions, job_ids) - start_items) // len(layers)))

        gpus = 1 if str(request.device).startswith("cuda") else 0  # one GPU per shard task
        results = run_on_ray(_ray_shard, tasks, request.ray_address, poll, num_gpus_per_task=gpus)
        progress.set(remaining)
        return results
    finally:
        progress.close()


def request_from_options(**options: Any) -> ExamplesRequest:
    params = ExampleParams(**{k: options.pop(k) for k in list(asdict(ExampleParams())) if k in options})
    return ExamplesRequest(params=params, **options)
