"""`microscope precompute typographic-eval`: the Distill article's automated typographic attack
evaluation (Figures 15-16) on a registered dataset, resumable.

One job (kind `typographic-eval`, the model and the dataset, shard 0). Its items are attacks:
first the (target class, text) pairs asked for (an attacks file, or by default every class
named by itself), then the search's candidates (the label set's short class names and the
words of a pool), whose target is the class each most often makes top. Each batch of attacks is
rendered on every picture of the dataset (the fixed setup, `precompute.typographic`) and
classified against the label set; success follows the article (the target becomes the top
class; pictures already classified as the target before the attack are left out). Every
checkpoint writes the batch's rows (`typographic_results`) in the transaction that moves the
job's cursor, so a killed run, re-run, ends with exactly the rows of an uninterrupted one.

The job follows the plan it ran last (label set, attacks, candidates, pictures); a re-run with
another plan starts it over, and results of other label sets stay side by side.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from precompute.errors import MicroscopeError, Problem
from precompute.typographic import AttackSpec, evaluate_attack, search_texts
from precompute.zeroshot import TextFeatureCache, classify, label_set
from store import repository
from store import typographic as results_store
from store.blobs import BlobStore
from workers.engines import ENGINES, Progress, StoreConfig, sessions_for, set_threads
from workers.locks import driver_lock
from workers.loop import Cadence, Checkpoint, claimed, open_store, release_orphans, run_pass, run_with_progress, spans
from workers.state import StateStore

KIND = "typographic-eval"
SETUP = "fixed"


@dataclass(frozen=True)
class TypographicRequest:
    model_id: str
    dataset_id: str
    labels: str = "world-shapes"  # a built-in label set
    custom_labels: tuple[str, ...] = ()  # or the user's labels
    attacks: tuple[AttackSpec, ...] = ()  # empty: every class named by itself
    search_pool: tuple[str, ...] = ()  # words the search tries after the class names
    search: bool = True
    limit: int = 1000  # pictures of the dataset (the article used 1,000 ImageNet validation images)
    attacks_per_batch: int = 8
    batch_size: int = 256
    device: str = "cpu"
    engine: str = "local"
    restart: bool = False
    checkpoint_every: int = 1
    checkpoint_seconds: float = 60.0
    threads: int = 0
    ray_address: str | None = None

    def label_set(self):
        try:
            return label_set(self.labels, list(self.custom_labels) or None)
        except Problem as error:
            raise MicroscopeError(error.detail) from None

    def validate(self) -> None:
        if self.limit < 1:
            raise MicroscopeError("--limit must be at least 1")
        for name, value in (("--attacks-per-batch", self.attacks_per_batch), ("--batch-size", self.batch_size)):
            if value < 1:
                raise MicroscopeError(f"{name} must be at least 1")
        if self.engine not in ENGINES:
            raise MicroscopeError(f"--engine must be one of {', '.join(ENGINES)}")
        labels = self.label_set()
        for spec in self.attacks:
            try:
                labels.index(spec.target)
            except Problem as error:
                raise MicroscopeError(f"attack {spec.text!r}: {error.detail}") from None


def plan_specs(request: TypographicRequest) -> tuple[AttackSpec, ...]:
    """The job's items: the attacks asked for, then the search's candidates."""
    labels = request.label_set()
    attacks = list(request.attacks) or [AttackSpec(name, name) for name in labels.names if len(name) <= 64]
    candidates = search_texts(labels.names, request.search_pool) if request.search else []
    return tuple(attacks) + tuple(AttackSpec(text) for text in candidates)


@dataclass(frozen=True)
class TypographicTask:
    store: StoreConfig
    request: TypographicRequest
    specs: tuple[AttackSpec, ...]
    plan: dict[str, Any]
    threads: int


def _plan_record(request: TypographicRequest, specs, labels) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps([[s.text, s.target] for s in specs]).encode()).hexdigest()
    return {"model": request.model_id, "dataset": request.dataset_id, "labels": labels.id, "specs_sha": digest,
            "limit": request.limit, "setup": SETUP, "attacks_per_batch": request.attacks_per_batch}


def run_typographic(store: StoreConfig, request: TypographicRequest, *, show_progress: bool = True, loaded=None) -> dict:
    from store.loading import load_registered, require_model

    request.validate()
    started = time.monotonic()
    labels = request.label_set()
    specs = plan_specs(request)
    with open_store(store) as opened:
        engine, sessions, states, _ = opened
        with sessions() as session:
            require_model(session, request.model_id)
            if repository.get_dataset(session, request.dataset_id) is None:
                raise MicroscopeError(f"dataset '{request.dataset_id}' is not registered")
            if loaded is None:
                loaded = load_registered(session, request.model_id, device=request.device)
        plan = _plan_record(request, specs, labels)
        summary: dict[str, Any] = {"model": request.model_id, "dataset": request.dataset_id, "labels": labels.id,
                                   "attacks": sum(s.kind == "attack" for s in specs),
                                   "search_candidates": sum(s.kind == "search" for s in specs)}
        with driver_lock(engine, f"typographic-eval of {request.model_id}"):
            job = _plan(sessions, states, request, plan, len(specs))
            if job is None:
                summary.update(status="already done", seconds=round(time.monotonic() - started, 2))
                return summary
            task = TypographicTask(store, request, specs, plan, request.threads or torch.get_num_threads())
            run_with_progress(run_typographic_pass, [task], request, opened, [job.id], total=len(specs), done=job.cursor,
                              desc=f"typographic {request.model_id}", unit="attack", show=show_progress, loaded=loaded)
        summary.update(status="done", seconds=round(time.monotonic() - started, 2))
        return summary


def _plan(sessions, states: StateStore, request: TypographicRequest, plan: dict, total: int):
    """The job row to run, reset if it last ran another plan; None when this plan is done."""
    with sessions() as session:
        found = repository.find_jobs(session, KIND, request.model_id, dataset_id=request.dataset_id)
        if found:
            job = found[0]
            meta = states.meta(job.state_uri) if job.state_uri else None
            if request.restart or (meta is not None and meta["plan"] != plan) or (meta is None and job.cursor):
                states.delete(job.state_uri)
                states.cleanup(f"{KIND}-{job.id}-", set())
                repository.checkpoint_job(session, job.id, 0, None, total_items=total)
                repository.reset_job(session, job.id)
            elif job.state == "done":
                return None
            else:
                release_orphans(session, [job])
        else:
            job = repository.ensure_job(session, KIND, request.model_id, dataset_id=request.dataset_id, total_items=total)
        session.commit()
        return repository.find_jobs(session, KIND, request.model_id, dataset_id=request.dataset_id)[0]


def load_dataset_images(session, blobs: BlobStore, dataset_id: str, limit: int) -> list[Image.Image]:
    from store import queries

    rows = queries.dataset_images(session, dataset_id, 0, limit)
    return [Image.open(io.BytesIO(blobs.get(row["blob_uri"]))).convert("RGB") for row in rows]


def run_typographic_pass(task: TypographicTask, *, loaded=None, progress: Progress | None = None) -> dict:
    """Run (or resume) the evaluation of `task`; usable in-process and as a Ray task."""
    from precompute.zeroshot import is_toy
    from store.loading import load_registered
    from store.text_pools import stored_label_set

    set_threads(task.threads)
    request = task.request
    engine, sessions = sessions_for(task.store)
    try:
        with sessions() as session:
            jobs = {"eval": repository.find_jobs(session, KIND, request.model_id, dataset_id=request.dataset_id)[0]}
        with claimed(sessions, jobs, KIND) as rows:
            blobs = BlobStore(task.store.blob_url)
            with sessions() as session:
                if loaded is None:
                    loaded = load_registered(session, request.model_id, device=request.device)
                images = load_dataset_images(session, blobs, request.dataset_id, request.limit)
                # a real CLIP's ImageNet classes from their stored embeddings, not 80,000 prompts
                labels = request.label_set()
                labels = stored_label_set(session, blobs, request.model_id, labels, is_toy(loaded)) or labels
            work = _TypographicPass(task, rows["eval"], loaded, images, StateStore(task.store.states), labels)
            cadence = Cadence(request.checkpoint_every, request.checkpoint_seconds)
            result = run_pass(sessions, work, rows, len(task.specs), cadence, progress)
        return {"attacks": result.items}
    finally:
        engine.dispose()


class _TypographicPass:
    """The loop's work: items are the attacks; each checkpoint writes the rows of the attacks
    since the last one and a small state file holding the plan."""

    def __init__(self, task: TypographicTask, job, loaded, images: list, states: StateStore, labels) -> None:
        self.task, self.request, self.loaded, self.images, self.states = task, task.request, loaded, images, states
        self.job_id, self.previous = job.id, job.state_uri
        self.labels = labels
        self.cache = TextFeatureCache()
        if not images:
            raise MicroscopeError(f"dataset '{task.request.dataset_id}' has no pictures")
        with torch.inference_mode():
            self.clean_top = classify(loaded, images, self.labels, task.request.batch_size, self.cache).argmax(dim=1)
        self.buffer: list[dict] = []
        self.fresh: str | None = None

    def batches(self, start: int):
        return spans(start, len(self.task.specs), self.request.attacks_per_batch)

    def compute(self, batch, _names) -> None:
        for spec in self.task.specs[batch.start:batch.stop]:
            row = evaluate_attack(self.loaded, self.images, self.clean_top, self.labels, spec, self.request.batch_size, self.cache)
            self.buffer.append({**row, "setup": SETUP})

    def save(self, _name: str, cursor: int, done: bool) -> Checkpoint | None:
        if not self.buffer and not done:
            return None
        import numpy as np

        self.fresh = self.states.save(f"{KIND}-{self.job_id}-{cursor:09d}", {"cursor": np.array([cursor])},
                                      {"plan": self.task.plan, "cursor": cursor})
        rows, request, labels = list(self.buffer), self.request, self.labels

        def write(session) -> None:
            results_store.replace_results(session, request.model_id, request.dataset_id, labels.id, rows)

        return Checkpoint(self.fresh, write)

    def committed(self, _name: str, checkpoint: Checkpoint) -> None:
        self.buffer = []
        if self.previous and self.previous != checkpoint.state_uri:
            self.states.delete(self.previous)
        self.previous = checkpoint.state_uri
        self.states.cleanup(f"{KIND}-{self.job_id}-", {checkpoint.state_uri})
