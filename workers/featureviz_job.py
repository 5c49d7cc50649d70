"""The featureviz job: feature visualizations of a layer's units, many units per optimisation.

Items are units (in the order asked). A batch is `units_per_batch` consecutive units; each
unit contributes one image per kind (channel, neuron), `diversity` images and one per facet,
all rendered in one batched optimisation (`precompute.featureviz.render`). Every batch is
committed with the job's cursor in one transaction: its PNGs and thumbnails are in the blob
store before, its `featureviz` rows (kind, variant, final activation, steps, seed and the
parameters) go in with the cursor. A SIGKILL loses at most the batch in flight, and since
batches are cut the same way and rendering is seeded, a re-run ends with the same store.

One job row per (model, layer); its plan (units, kinds, settings) is kept in a small state
file. A re-run with another plan restarts the row; a plan whose images are all stored
already (same plan id in their parameters) answers `already done` without a job.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from precompute.errors import MicroscopeError
from precompute.featureviz.render import FACET_FILTERS, KINDS
from store import repository
from store.blobs import BlobStore
from workers.engines import Progress, StoreConfig, sessions_for, set_threads
from workers.locks import driver_lock
from workers.loop import (Cadence, Checkpoint, claimed, open_store, resume_or_start_over, run_pass, run_with_progress, spans,
                          stored_plan)
from workers.state import StateStore

KIND = "featureviz"
ENGINES = ("local", "ray")
THUMBNAIL = 96


def parse_units(text: str | None, count: int) -> tuple[int, ...]:
    """'0-47,254' -> (0, ..., 47, 254); None or '' or 'all' -> every unit."""
    if text is None or text.strip() in ("", "all"):
        return tuple(range(count))
    units: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(p) for p in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                units.extend(range(lo, hi + 1))
            else:
                units.append(int(part))
        except ValueError:
            raise MicroscopeError(f"--units: '{part}' is not a unit or a range like 0-47") from None
    bad = [u for u in units if not 0 <= u < count]
    if bad:
        raise MicroscopeError(f"the layer has units 0-{count - 1}; there is no unit {bad[0]}")
    return tuple(dict.fromkeys(units))


@dataclass(frozen=True)
class FeatureVizRequest:
    model_id: str
    layer: str
    units: tuple[int, ...] | None = None  # None: every unit of the layer
    kinds: tuple[str, ...] = ("channel",)
    steps: int = 512
    diversity: int = 4  # images per unit for the diversity kind
    facets: tuple[str, ...] = ()
    facet_layer: str | None = None  # default: the render's lower layer
    seed: int = 0
    lr: float | None = None  # default: the render's, Lucid's rate scaled to the steps
    param: str = "fourier"
    diversity_weight: float = 0.5
    facet_weight: float = 1.0
    facet_filter: str = "positive"  # or "signed", the article's exact form
    batch_size: int | None = None  # images per optimisation; default: from the device's memory
    device: str = "cpu"
    engine: str = "local"
    ray_address: str | None = None
    threads: int = 0
    restart: bool = False

    def validate(self) -> None:
        if self.steps < 1:
            raise MicroscopeError("--steps must be at least 1")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise MicroscopeError(f"unknown --kinds {','.join(unknown) or '(none)'}; kinds: {', '.join(KINDS)}")
        if "diversity" in self.kinds and self.diversity < 2:
            raise MicroscopeError("--diversity must be at least 2 (images per unit)")
        if "facet" in self.kinds and not self.facets:
            raise MicroscopeError("the facet kind needs --facets (e.g. text,object)")
        if self.batch_size is not None and self.batch_size < 1:
            raise MicroscopeError("--batch-size must be at least 1")
        if self.facet_filter not in FACET_FILTERS:
            raise MicroscopeError(f"--facet-filter must be one of {', '.join(FACET_FILTERS)}")
        if self.engine not in ENGINES:
            raise MicroscopeError(f"--engine must be one of {', '.join(ENGINES)}")
        if self.units is not None and not self.units:
            raise MicroscopeError("--units names no unit")

    def items_per_unit(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for kind in self.kinds:
            if kind in ("channel", "neuron"):
                out.append((kind, ""))
            elif kind == "diversity":
                out.extend(("diversity", str(k)) for k in range(self.diversity))
            else:
                out.extend(("facet", name) for name in self.facets)
        return out

    def settings(self, batch_size: int | None = None):
        from precompute.featureviz.render import RenderSettings

        return RenderSettings(steps=self.steps, lr=self.lr, param=self.param, diversity_weight=self.diversity_weight,
                              facet_weight=self.facet_weight, facet_filter=self.facet_filter, seed=self.seed,
                              batch_size=batch_size)

    def plan(self) -> dict[str, Any]:
        """What the job's images depend on; its hash is the plan id stored with each image."""
        return {"model": self.model_id, "layer": self.layer, "units": list(self.units or ()), "kinds": list(self.kinds),
                "steps": self.steps, "diversity": self.diversity, "facets": list(self.facets),
                "facet_layer": self.facet_layer, "seed": self.seed, "lr": self.lr, "param": self.param,
                "diversity_weight": self.diversity_weight, "facet_weight": self.facet_weight,
                "facet_filter": self.facet_filter, "batch_size": self.batch_size}

    def plan_id(self) -> str:
        return hashlib.sha256(json.dumps(self.plan(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FeatureVizTask:
    store: StoreConfig
    request: FeatureVizRequest
    units_per_batch: int
    images_per_batch: int
    threads: int
    probes: tuple = field(default=())  # FacetProbe objects, for the facets asked


def _png(pixels: np.ndarray, size: int | None = None) -> bytes:
    image = Image.fromarray(pixels)
    if size is not None and max(image.size) > size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _check(session, request: FeatureVizRequest, blobs: BlobStore):
    """Everything a bad request can trip on, before any work: returns (request with units,
    the facet probes)."""
    from precompute.architectures import architecture
    from precompute.featureviz.objectives import centre_position
    from precompute.featureviz.render import lower_layer
    from store.loading import require_layers, require_model
    from store.featureviz import load_facet_probe

    model = require_model(session, request.model_id)
    spec = require_layers(session, model, [request.layer])
    target = architecture(model.arch).layer(request.layer)
    request = replace(request, units=parse_units(",".join(map(str, request.units)) if request.units else None, target.units))
    if "neuron" in request.kinds:
        centre_position(target)
    probes = ()
    if "facet" in request.kinds:
        facet_layer = request.facet_layer or lower_layer(spec, request.layer)
        spec.layer(facet_layer)
        if spec.layer(facet_layer).position >= target.position:
            raise MicroscopeError(f"a facet probe must be on a layer below {request.layer}, not {facet_layer}")
        probes = tuple(load_facet_probe(session, blobs, request.model_id, facet, facet_layer) for facet in request.facets)
    return request, probes


def run_featureviz(store: StoreConfig, request: FeatureVizRequest, *, show_progress: bool = True, loaded=None) -> dict:
    from store.featureviz import featureviz_plans
    from store.loading import load_registered

    request.validate()
    started = time.monotonic()
    with open_store(store) as opened:
        engine, sessions, states, blobs = opened
        with sessions() as session:
            request, probes = _check(session, request, blobs)
            layer_row = repository.get_layer(session, request.model_id, request.layer)
            unit_id_of = repository.unit_ids(session, layer_row.id)
            plan_id = request.plan_id()
            wanted = {(unit_id_of[u], kind, variant) for u in request.units for kind, variant in request.items_per_unit()}
            stored = featureviz_plans(session, [unit_id_of[u] for u in request.units])
        summary: dict[str, Any] = {"model": request.model_id, "layer": request.layer, "units": len(request.units),
                                   "images": len(wanted), "kinds": list(request.kinds), "steps": request.steps,
                                   "engine": request.engine}
        if not request.restart and all(stored.get(key) == plan_id for key in wanted):
            summary.update(status="already done", seconds=round(time.monotonic() - started, 2))
            return summary
        if loaded is None and request.engine == "local":
            with sessions() as session:
                loaded = load_registered(session, request.model_id, device=request.device)
        per_unit = len(request.items_per_unit())
        images_per_batch = request.batch_size or _auto_images(loaded, request, probes)
        units_per_batch = max(1, images_per_batch // per_unit)
        with driver_lock(engine, f"featureviz of {request.model_id}/{request.layer}"):
            job = _plan(sessions, states, request)
            if job is None:
                summary.update(status="already done", seconds=round(time.monotonic() - started, 2))
                return summary
            total = len(request.units)
            task = FeatureVizTask(store, request, units_per_batch, images_per_batch,
                                  request.threads or torch.get_num_threads(), probes)
            begin = job.cursor
            pass_started = time.monotonic()
            run_with_progress(run_featureviz_pass, [task], request, opened, [job.id], total=total, done=begin,
                              desc=f"featureviz {request.model_id}/{request.layer}", unit="unit", show=show_progress,
                              loaded=loaded)
            seconds = time.monotonic() - pass_started
        rate = (total - begin) / seconds if seconds > 0 and begin < total else None
        summary.update(status="done", units_per_batch=units_per_batch, images_per_batch=units_per_batch * per_unit,
                       units_per_second=round(rate, 3) if rate else None, seconds=round(time.monotonic() - started, 2))
        return summary


def _auto_images(loaded, request: FeatureVizRequest, probes) -> int:
    from precompute.featureviz.render import auto_batch_size, lower_layer

    layers = [request.layer]
    if "diversity" in request.kinds or "facet" in request.kinds:
        layers.append(request.facet_layer or lower_layer(loaded.spec, request.layer))
    images = auto_batch_size(loaded, layers, loaded.spec.image_size)
    if loaded.device.type == "cpu":
        images = min(images, 64)  # beyond this a CPU step gets no faster per image
    return images


def _plan(sessions, states: StateStore, request: FeatureVizRequest):
    """The layer's job row for this plan (reset if it last ran another), or None if done."""
    plan = request.plan()

    def plan_state(job) -> str:
        return states.save(f"{KIND}-{job.id}-plan-{request.plan_id()}", {}, {"plan": plan})

    with sessions() as session:
        found = repository.find_jobs(session, KIND, request.model_id, layer=request.layer)
        total = len(request.units)
        if found:
            job = found[0]
            if not resume_or_start_over(session, states, job, stored_plan(states, job.state_uri, missing_ok=True), plan,
                                        restart=request.restart, total=total, fresh_state=lambda: plan_state(job)):
                session.commit()
                return None
        else:
            job = repository.ensure_job(session, KIND, request.model_id, layer=request.layer, total_items=total)
            session.flush()
            repository.checkpoint_job(session, job.id, 0, plan_state(job), total_items=total)
        session.commit()
        return repository.find_jobs(session, KIND, request.model_id, layer=request.layer)[0]


def run_featureviz_pass(task: FeatureVizTask, *, loaded=None, progress: Progress | None = None) -> dict:
    """Run (or resume) the job's pass; usable in-process and as a Ray task."""
    from store.loading import load_registered

    set_threads(task.threads)
    request = task.request
    engine, sessions = sessions_for(task.store)
    try:
        with sessions() as session:
            jobs = {request.layer: repository.find_jobs(session, KIND, request.model_id, layer=request.layer)[0]}
        with claimed(sessions, jobs, KIND) as rows:
            if loaded is None:
                with sessions() as session:
                    loaded = load_registered(session, request.model_id, device=request.device)
            work = _FeatureVizPass(task, rows[request.layer], loaded, BlobStore(task.store.blob_url), sessions)
            result = run_pass(sessions, work, rows, len(request.units), Cadence(every=1), progress)
        return {"units": result.items}
    finally:
        engine.dispose()


class _FeatureVizPass:
    """The loop's work: items are units; a batch's images are rendered together, written to
    the blob store, and their rows go in with the batch's checkpoint."""

    def __init__(self, task: FeatureVizTask, job, loaded, blobs: BlobStore, sessions) -> None:
        self.task, self.request, self.loaded, self.blobs = task, task.request, loaded, blobs
        self.job = job
        self.probes = {probe.facet: probe for probe in task.probes}
        self.plan_id = self.request.plan_id()
        with sessions() as session:
            layer_row = repository.get_layer(session, self.request.model_id, self.request.layer)
            self.unit_id_of = repository.unit_ids(session, layer_row.id)
        self.pending: list[dict[str, Any]] = []
        self.pending_units: list[int] = []

    def batches(self, start: int):
        return spans(start, len(self.request.units), self.task.units_per_batch)

    def compute(self, batch, names: list[str]) -> None:
        from precompute.featureviz.render import RenderItem, render

        units = self.request.units[batch.start : batch.stop]
        items = [RenderItem(u, kind, variant) for u in units for kind, variant in self.request.items_per_unit()]
        settings = self.request.settings(batch_size=max(len(items), 1))
        results = render(self.loaded, self.request.layer, items, settings, probes=self.probes)
        rows = []
        for result in results:
            full = _png(result.image)
            thumb = _png(result.image, THUMBNAIL)
            uri = self.blobs.put(full, ".png")
            thumb_uri = self.blobs.put(thumb, ".png") if thumb != full else uri
            item = result.item
            parameters = {**result.parameters, "plan": self.plan_id, "steps": self.request.steps, "seed": result.seed}
            if result.probe_score is not None:
                parameters["probe_score"] = round(result.probe_score, 6)
            rows.append({"unit_id": self.unit_id_of[item.unit], "kind": item.kind, "variant": item.variant,
                         "blob_uri": uri, "thumbnail_uri": thumb_uri, "final_activation": result.final_activation,
                         "parameters": parameters})
        self.pending, self.pending_units = rows, list(units)

    def save(self, name: str, cursor: int, done: bool) -> Checkpoint | None:
        from store.featureviz import replace_featureviz

        rows, unit_ids = list(self.pending), [self.unit_id_of[u] for u in self.pending_units]
        kinds = [(kind, None if kind == "diversity" else variant) for kind, variant in self.request.items_per_unit()]

        def write(session) -> None:
            replace_featureviz(session, unit_ids, dict.fromkeys(kinds), rows)

        return Checkpoint(self.job.state_uri, write if rows else None)

    def committed(self, name: str, checkpoint: Checkpoint) -> None:
        self.pending, self.pending_units = [], []


# -- facet probes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FacetRequest:
    model_id: str
    layer: str | None  # default: the lower layer of the model's final layer
    facet: str
    images: str | None = None  # a folder of the facet's images
    generic: str | None = None  # a folder of generic images
    world: bool = False  # the toy world's built-in facet of that name
    count: int = 200  # world images per side
    seed: int = 0
    device: str = "cpu"


def _folder_images(folder: str) -> list[Image.Image]:
    from pathlib import Path

    from precompute.images import decode_image

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise MicroscopeError(f"{folder} is not a folder of images")
    images = []
    for file in sorted(path.rglob("*")):
        if file.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"):
            try:
                images.append(decode_image(file.read_bytes()))
            except Exception:  # an unreadable file is skipped, as datasets do
                continue
    if len(images) < 2:
        raise MicroscopeError(f"{folder} holds fewer than two readable images")
    return images


def train_facet(store: StoreConfig, request: FacetRequest, *, loaded=None) -> dict:
    """Train and store a facet probe on a layer of a registered model."""
    WORLD_FACETS = ("text", "object")  # precompute.featureviz.facets.WORLD_FACETS, checked before importing torch
    if not request.world and not (request.images and request.generic):
        raise MicroscopeError("give --images and --generic folders, or --world for a built-in facet")
    if request.world and request.facet not in WORLD_FACETS:
        raise MicroscopeError(f"no built-in facet '{request.facet}'; built-in facets: {', '.join(WORLD_FACETS)}")
    if not request.facet or len(request.facet) > 64 or not request.facet.replace("-", "").replace("_", "").isalnum():
        raise MicroscopeError("a facet name is 1-64 letters, digits, '-' or '_'")
    from precompute.featureviz.facets import train_probe, world_facet_images
    from precompute.featureviz.render import lower_layer
    from store.featureviz import save_facet_probe
    from store.loading import load_registered, require_layers, require_model

    engine, sessions = sessions_for(store)
    blobs = BlobStore(store.blob_url)
    try:
        with sessions() as session:
            model = require_model(session, request.model_id)
            from precompute.architectures import architecture

            spec = architecture(model.arch)
            layer = request.layer or lower_layer(spec, spec.final_layer.name)
            require_layers(session, model, [layer])
            if loaded is None:
                loaded = load_registered(session, request.model_id, device=request.device)
        if request.world:
            positives, negatives = world_facet_images(request.facet, request.count, request.seed, loaded.spec.image_size)
            source = f"precompute.world:{request.facet}:{request.count}:seed{request.seed}"
        else:
            positives, negatives = _folder_images(request.images), _folder_images(request.generic)
            source = f"{request.images} vs {request.generic}"
        probe, fit = train_probe(loaded, layer, request.facet, positives, negatives, seed=request.seed)
        parameters = {"source": source, "positives": fit.positives, "negatives": fit.negatives,
                      "train_accuracy": round(fit.train_accuracy, 4), "held_out_accuracy": round(fit.held_out_accuracy, 4),
                      "model": request.model_id, "layer": layer}
        with sessions() as session:
            save_facet_probe(session, blobs, request.model_id, layer, request.facet, fit.weights, fit.bias, parameters)
            session.commit()
        return {"model": request.model_id, "layer": layer, "facet": request.facet, **parameters}
    finally:
        engine.dispose()


# -- the demo -------------------------------------------------------------------------------

DEMO_STEPS = 64  # fits the demo's budget (about 2 minutes for both toy models on 2 cores)
DEMO_FIRST_PAGE = 48  # units on the layer grid's first page
DEMO_FACETS = ("text", "object")
DEMO_DIVERSITY = 4


def demo_units(model_id: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(units whose channel visualization the demo renders: the first grid page and the
    figures' units; the figures' units, which also get diversity and facets)."""
    import json

    from precompute.toy import embedded_checkpoint

    figures_file = embedded_checkpoint(model_id).parent / "figures.json"
    figures = json.loads(figures_file.read_text()).get(model_id, {}).get("multimodal_units", {})
    named = tuple(dict.fromkeys(int(entry["unit"]) for entry in figures.values()))
    return tuple(dict.fromkeys([*range(DEMO_FIRST_PAGE), *named])), named


def render_demo(store: StoreConfig, loaded, *, steps: int = DEMO_STEPS, device: str = "cpu",
                show_progress: bool = True) -> list[str]:
    """The demo's visualizations of one toy model's final layer: train the world facets
    (`text`, `object`) on the layer below, render the channel visualizations of the first
    grid page and of the figures' units, then the figures' units' diversity sets and facets.
    Idempotent: a re-run finds everything stored and renders nothing. Returns report lines."""
    from precompute.featureviz.render import lower_layer
    from store.featureviz import facet_probes

    model_id = loaded.model_id
    layer = loaded.spec.final_layer.name
    lower = lower_layer(loaded.spec, layer)
    lines = []
    engine, sessions = sessions_for(store)
    try:
        with sessions() as session:
            have = {(row["facet"], row["layer"]) for row in facet_probes(session, model_id)}
    finally:
        engine.dispose()
    for facet in DEMO_FACETS:
        if (facet, lower) not in have:
            summary = train_facet(store, FacetRequest(model_id, lower, facet, world=True, count=100, device=device), loaded=loaded)
            lines.append(f"{model_id} {lower}: facet probe '{facet}' (held-out accuracy {summary['held_out_accuracy']})")
    channel_units, named = demo_units(model_id)
    runs = [FeatureVizRequest(model_id, layer, units=channel_units, kinds=("channel",), steps=steps, device=device)]
    if named:
        runs.append(FeatureVizRequest(model_id, layer, units=named, kinds=("diversity", "facet"), steps=steps,
                                      diversity=DEMO_DIVERSITY, facets=DEMO_FACETS, device=device))
    for request in runs:
        summary = run_featureviz(store, request, show_progress=show_progress, loaded=loaded)
        lines.append(f"{model_id} {layer}: feature visualizations ({', '.join(request.kinds)}) of {len(request.units)} units "
                     f"at {steps} steps ({summary['status']}, {summary['seconds']} s)")
    return lines
