"""`microscope precompute examples`: dataset examples, statistics and conditional-probability
samples of every unit of some layers, resumable, on one machine or a Ray cluster.

Plan. The dataset's positions are cut into `shards` contiguous ranges. Every (layer, shard)
is a job row (kind `examples`); every layer also has one `examples-merge` job that writes its
results. A new plan fixes each layer's histogram/sample bins from a calibration batch (the
first batch of the dataset) and writes every shard's empty accumulator as its initial state,
all in one transaction, so resumed and remote shards always start from the same bins.

Shards. Each shard is one pass of the job loop (workers.loop) over its dataset positions,
serving all requested layers at once: the model runs once per batch and every layer's
accumulator takes its slice. At every checkpoint each layer's accumulator is saved
(workers.state) and the jobs' cursors and state URIs are committed together, so a killed
shard re-run ends bit-identical to an uninterrupted run. The same shard function runs
in-process (`--engine local`) or as a Ray task (`--engine ray`).

Merge. When all shards of a layer are done, their accumulators merge in shard order (top-k
exactly, moments in a fixed order) and a second pass of the loop, over units, writes the
results in chunks, each chunk in one transaction with the merge job's cursor: examples with
the box of the region around the maximum (the web server cuts the crop from the stored image
when a page asks for it, so the write is rows only), buckets, and unit statistics with the
histogram.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from store import repository
from store.blobs import BlobStore
from precompute import keys as K
from precompute.architectures import LayerSpec
from precompute.crop_boxes import CropBox
from precompute.crops import DEFAULT_CROP_SIZE, cell_box
from precompute.errors import MicroscopeError
from precompute.examples import ExampleParams, LayerAccumulator, calibrated_range, merge_all, ranking_values
from precompute.loader import iter_batches
from workers.engines import ENGINES, Progress, StoreConfig, sessions_for, set_threads
from workers.locks import driver_lock
from workers.loop import (
    AccumulatorPass, Cadence, Checkpoint, claimed, refuse_other_plan, release_orphans, run_pass, run_shards, shard_bounds, spans,
    stored_plan,
)
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
    try:
        with sessions() as session:
            jobs = {layer: job for layer in task.layers if (job := _job_at(session, request, layer, task.shard)).state != "done"}
        if not jobs:
            return {"shard": task.shard, "images": 0, "skipped": 0}
        with claimed(sessions, jobs, KIND) as rows:
            with sessions() as session:
                items = repository.dataset_items(session, request.dataset_id, task.start, task.stop)
                if loaded is None:
                    loaded = load_registered(session, request.model_id, device=request.device)
            if len(items) != task.stop - task.start:
                raise MicroscopeError(f"dataset '{request.dataset_id}' changed since the plan; re-run with --restart")
            work = _ShardPass(request, rows, items, loaded, StateStore(task.store.states), BlobStore(task.store.blob_url),
                              calibration)
            cadence = Cadence(request.checkpoint_every, request.checkpoint_seconds)
            result = run_pass(sessions, work, rows, len(items), cadence, progress)
        return {"shard": task.shard, "images": result.items, "skipped": result.skipped}
    finally:
        engine.dispose()


class _ShardPass(AccumulatorPass):
    """The loop's work for one shard: items are the shard's dataset positions, each layer's
    state is its accumulator, saved whole at every checkpoint."""

    kind = KIND

    def __init__(self, request: ExamplesRequest, jobs: dict, items, loaded, states: StateStore, blobs: BlobStore,
                 calibration: dict | None) -> None:
        self.request, self.loaded, self.states, self.blobs, self.calibration = request, loaded, states, blobs, calibration
        self.job_ids = {layer: job.id for layer, job in jobs.items()}
        self.accumulators: dict[str, LayerAccumulator] = {}
        self.plans: dict[str, dict] = {}
        self.current_uri: dict[str, str] = {}
        for layer, job in jobs.items():
            arrays, meta = states.load(job.state_uri)
            self.accumulators[layer] = LayerAccumulator.from_state(arrays, meta, loaded.device)
            self.plans[layer] = meta["plan"]
            self.current_uri[layer] = job.state_uri
        positions = np.array([item[0] for item in items], dtype=np.int64)
        self.sample_keys = torch.from_numpy(K.sample_keys([item[2] for item in items], positions))
        self.pairs = [(item[0], item[3]) for item in items]

    def batches(self, start: int):
        return iter_batches(self.pairs, self.request.batch_size, self.blobs.get, self.loaded.preprocess, start=start,
                            threads=self.request.loader_threads)

    def compute(self, batch, layers: list[str]) -> None:
        if batch.positions.numel() and layers:
            calibration = self.calibration
            reuse = calibration is not None and torch.equal(calibration["positions"], batch.positions)
            if reuse and all(layer in calibration["values"] for layer in layers):
                values = calibration["values"]
            else:
                values = ranking_values(self.loaded, batch.images, layers)
            keys = self.sample_keys[batch.start : batch.stop][torch.as_tensor(batch.index) - batch.start]
            for layer in layers:
                self.accumulators[layer].update(values[layer][0], values[layer][1], batch.positions, keys)
        for layer in layers:
            self.accumulators[layer].skipped += len(batch.skipped)


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
    bounds = shard_bounds(count, request.shards)
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
            refuse_other_plan(f"examples of {layer} on '{request.dataset_id}'", stored_plan(states, jobs[0].state_uri), wanted,
                              same_shards=len(jobs) == len(bounds))
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
    with sessions() as session:
        release_orphans(session, [job for layer in layers for kind in (KIND, MERGE_KIND)
                                  for job in repository.find_jobs(session, kind, request.model_id, layer=layer,
                                                                  dataset_id=request.dataset_id)])
        session.commit()


# -- merge and write ------------------------------------------------------------------------------------
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
        layer_row = repository.get_layer(session, request.model_id, layer)
        unit_id_of = repository.unit_ids(session, layer_row.id)
    started = time.monotonic()
    with claimed(sessions, {layer: merge}, MERGE_KIND) as rows:
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
        cursor = rows[layer].cursor
        boxes = _crop_boxes(spec, loaded.spec.image_size, request.crop_size)
        run_pass(sessions, _ResultWrites(request, spec, results, unit_id_of, image_of, boxes), rows, spec.units,
                 Cadence(every=1), progress)
    seconds = time.monotonic() - started
    keep = {job.state_uri for job in jobs}
    for job in jobs:
        states.cleanup(f"{KIND}-{job.id}-", keep)
    return {"images": results.count, "skipped": results.skipped, "units_written": spec.units - cursor,
            "write_seconds": seconds}


def _crop_boxes(spec: LayerSpec, image_size: int, size: int) -> list[str] | None:
    """The recorded crop box of each grid cell of a spatial layer (None for pooled layers):
    the web server cuts the crop from the stored image when a page asks for it."""
    if spec.spatial is None:
        return None
    h, w = spec.spatial
    return [CropBox(*cell_box(spec, image_size, cell), size).text() for cell in range(h * w)]


class _ResultWrites:
    """The loop's work for a layer's merge: items are units, written in chunks, each chunk's
    examples, buckets and statistics in the transaction of the merge job's cursor."""

    def __init__(self, request: ExamplesRequest, spec: LayerSpec, results, unit_id_of, image_of, boxes) -> None:
        self.request, self.spec, self.results, self.unit_id_of, self.image_of, self.boxes = (
            request, spec, results, unit_id_of, image_of, boxes)
        params = request.params
        self.chunk = max(1, min(256, 20_000 // (2 * params.k + params.buckets * params.per_bucket)))
        self.pending: tuple[list, list, list, list] | None = None

    def batches(self, start: int):
        return spans(start, self.spec.units, self.chunk)

    def compute(self, batch, names: list[str]) -> None:
        self.pending = self._rows(batch.start, batch.stop)

    def save(self, name: str, cursor: int, done: bool) -> Checkpoint:
        rows, self.pending = self.pending, None
        if rows is None:
            return Checkpoint(None)
        ids, examples, buckets, stats = rows
        dataset_id = self.request.dataset_id

        def write(session) -> None:
            repository.replace_dataset_examples(session, dataset_id, ids, examples)
            repository.replace_bucket_samples(session, dataset_id, ids, buckets)
            repository.update_unit_statistics(session, stats)

        return Checkpoint(None, write)

    def committed(self, name: str, checkpoint: Checkpoint) -> None:
        pass

    def _rows(self, begin: int, end: int) -> tuple[list, list, list, list]:
        results, params, dataset_id, image_of, boxes = (
            self.results, self.request.params, self.request.dataset_id, self.image_of, self.boxes)
        n_examples = results.top_positions.shape[1]
        measure = "spatial maximum" if self.spec.spatial else "value"
        pre = self.spec.pre_activation_module is not None
        ids = [self.unit_id_of[u] for u in range(begin, end)]
        examples, buckets, stats = [], [], []
        for u in range(begin, end):
            uid = self.unit_id_of[u]
            for sign, values, positions, args in (
                ("top", results.top_values, results.top_positions, results.top_args),
                ("bottom", results.bottom_values, results.bottom_positions, results.bottom_args),
            ):
                for rank in range(n_examples):
                    position = int(positions[u, rank])
                    arg = int(args[u, rank]) if args is not None else None
                    examples.append({
                        "unit_id": uid, "dataset_id": dataset_id, "sign": sign, "rank": rank,
                        "image_id": int(image_of[position]), "activation": float(values[u, rank]),
                        "position": arg, "crop_uri": None, "crop_box": boxes[arg] if boxes is not None else None,
                    })
            edges = results.bucket_edges[u]
            for b in range(params.buckets):
                for slot in range(params.per_bucket):
                    position = int(results.bucket_positions[u, b, slot])
                    if position < 0:
                        continue
                    buckets.append({
                        "unit_id": uid, "dataset_id": dataset_id, "bucket": b, "slot": slot,
                        "low": float(edges[b]), "high": float(edges[b + 1]), "image_id": int(image_of[position]),
                        "activation": float(results.bucket_values[u, b, slot]),
                    })
            histogram = results.histogram(u) | {"dataset": dataset_id, "measure": measure, "pre_activation": pre}
            stats.append({
                "id": uid, "mean": float(results.mean[u]), "std": float(results.std[u]), "min": float(results.min[u]),
                "max": float(results.max[u]), "fraction_active": float(results.fraction_active[u]), "histogram": histogram,
            })
        return ids, examples, buckets, stats


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
        written = sum(v.get("units_written", 0) for v in layer_summaries.values())
        write_seconds = sum(v.get("write_seconds", 0.0) for v in layer_summaries.values())
        summary.update(
            status="done",
            processed=processed,
            skipped=max([v.get("skipped", 0) for v in layer_summaries.values()] + [0]),
            pass_seconds=round(pass_seconds, 2),
            images_per_second=round(processed / pass_seconds, 2) if pass_seconds > 0 and processed else None,
            units_written=written,
            write_seconds=round(write_seconds, 2),
            write_units_per_second=round(written / write_seconds, 2) if write_seconds > 0 and written else None,
            seconds=round(time.monotonic() - started, 2),
        )
        return summary
    finally:
        engine.dispose()


def _run_shards(store, sessions, request, layers, items, loaded, calibration, show_progress) -> list[dict]:
    threads = request.threads or torch.get_num_threads()
    tasks = []
    job_ids = []
    remaining = 0
    already = 0
    with sessions() as session:
        for shard, (start, stop) in enumerate(shard_bounds(len(items), request.shards)):
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
        return run_shards(run_shard, tasks, engine=request.engine, progress=progress, sessions=sessions, job_ids=job_ids,
                          local_options={"loaded": loaded, "calibration": calibration, "progress": progress},
                          rows_per_item=len(layers), ray_address=request.ray_address, device=request.device)
    finally:
        progress.close()


def request_from_options(**options: Any) -> ExamplesRequest:
    params = ExampleParams(**{k: options.pop(k) for k in list(asdict(ExampleParams())) if k in options})
    return ExamplesRequest(params=params, **options)
