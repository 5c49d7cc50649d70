"""`microscope precompute words`: rastered words through the model, resumable.

One job (kind `words`, shard 0) per layer; one pass of the job loop (workers.loop) over the
word list serves all requested layers, in this process (`--engine local`) or as a Ray task
(`--engine ray`). Each batch of words is rendered (precompute.words) in a background thread
while the model runs. Every checkpoint saves the activation rows computed since the previous
one as a chunk and commits the job's cursor with the chunk's URI; a chunk's metadata lists
the chunks before it, so the committed state URI alone finds every row. At the end each
layer's (words x units) matrix gives every unit's top words (`word_activations`) and the
layer's image-based word embedding (`word_embeddings`: vectors minus their mean, as .npy
blobs), written in the transaction of the last checkpoint, which marks the job done.

A layer holds the results of several word lists side by side (the toy models are read with
the synthetic world's vocabulary and with common English words). Its one job follows the
list it ran last; asking again for a list whose results are stored finds it done.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from store import repository
from store.blobs import BlobStore
from precompute.errors import MicroscopeError
from precompute.examples import ranking_values
from precompute.loader import iter_batches
from precompute.words import DEFAULT_TOP_WORDS, check_font, embeddings, render_word, top_words, word_list_id
from workers.engines import ENGINES, Progress, StoreConfig, sessions_for, set_threads
from workers.locks import driver_lock
from workers.loop import Cadence, Checkpoint, claimed, open_store, release_orphans, run_pass, run_with_progress
from workers.state import StateStore

KIND = "words"


@dataclass(frozen=True)
class WordsRequest:
    model_id: str
    layers: tuple[str, ...]
    words: tuple[str, ...]
    source: str  # "wordfreq:en:10000" or the word file's path
    font: str | None = None
    font_size: int | None = None
    image_size: int | None = None  # default: the model's input size
    top: int = DEFAULT_TOP_WORDS
    batch_size: int = 64
    device: str = "cpu"
    engine: str = "local"
    restart: bool = False
    checkpoint_every: int = 20  # batches between checkpoints (whichever comes first ...)
    checkpoint_seconds: float = 60.0  # ... or seconds
    list_id: str | None = None
    threads: int = 0  # torch threads in the worker; 0 = this process's count
    loader_threads: int = 1
    ray_address: str | None = None

    def validate(self) -> None:
        if not self.layers:
            raise MicroscopeError("name at least one --layer")
        if not self.words:
            raise MicroscopeError("the word list is empty")
        for name, value in (("--batch-size", self.batch_size), ("--top", self.top)):
            if value < 1:
                raise MicroscopeError(f"{name} must be at least 1")
        if self.font_size is not None and self.font_size < 1:
            raise MicroscopeError("--font-size must be at least 1")
        if self.image_size is not None and self.image_size < 8:
            raise MicroscopeError("--image-size must be at least 8")
        if self.engine not in ENGINES:
            raise MicroscopeError(f"--engine must be one of {', '.join(ENGINES)}")


@dataclass(frozen=True)
class WordsTask:
    """The pass over the word list for the layers whose job is not done: the whole of what
    a worker (this process or a Ray task) needs."""

    store: StoreConfig
    request: WordsRequest
    list_id: str
    words_sha: str
    layers: tuple[str, ...]
    threads: int


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def run_words(store: StoreConfig, request: WordsRequest, *, show_progress: bool = True, loaded=None) -> dict:
    from store.loading import load_registered, require_layers, require_model

    request.validate()
    started = time.monotonic()
    font_file = check_font(request.font)
    with open_store(store) as opened:
        engine, sessions, states, _ = opened
        with sessions() as session:
            model = require_model(session, request.model_id)
            require_layers(session, model, request.layers)
            if loaded is None:
                loaded = load_registered(session, request.model_id, device=request.device)
        request = replace(request, layers=tuple(dict.fromkeys(request.layers)),
                          image_size=request.image_size or loaded.spec.image_size)
        list_id = request.list_id or word_list_id(request.source, request.font, request.font_size, request.image_size)
        words_sha = hashlib.sha256("\n".join(request.words).encode()).hexdigest()
        summary: dict[str, Any] = {"model": request.model_id, "layers": list(request.layers), "word_list": list_id,
                                   "words": len(request.words), "engine": request.engine}
        with driver_lock(engine, f"words of {request.model_id}"):
            jobs = _plan(sessions, states, request, list_id, words_sha, font_file)
            if not jobs:
                summary.update(status="already done", seconds=round(time.monotonic() - started, 2))
                return summary
            total = len(request.words)
            begin = min(job.cursor for job in jobs.values())
            task = WordsTask(store, request, list_id, words_sha, tuple(jobs), request.threads or torch.get_num_threads())
            pass_started = time.monotonic()
            run_with_progress(run_words_pass, [task], request, opened, [job.id for job in jobs.values()], total=total,
                              done=begin, desc=f"words {','.join(jobs)}", unit="word", show=show_progress,
                              rows_per_item=len(jobs), loaded=loaded)
            seconds = time.monotonic() - pass_started
        rate = round((total - begin) / seconds, 1) if seconds > 0 and begin < total else None
        summary.update(status="done", words_per_second=rate, seconds=round(time.monotonic() - started, 2))
        return summary


def _plan_record(request: WordsRequest, layer: str, list_id: str, words_sha: str) -> dict[str, Any]:
    """What a layer's job was planned with; a re-run must match it to resume it."""
    return {"model": request.model_id, "layer": layer, "word_list": list_id, "words_sha": words_sha,
            "batch_size": request.batch_size, "top": request.top}


def _plan(sessions, states: StateStore, request: WordsRequest, list_id: str, words_sha: str, font_file: str) -> dict[str, Any]:
    """Record the word list, reset jobs planned for other words, return {layer: job} to run."""
    words = list(request.words)
    todo = {}
    with sessions() as session:
        existing = repository.get_word_list(session, list_id)
        if existing is not None and list(existing.words) != words and not request.restart:
            raise MicroscopeError(
                f"word list '{list_id}' is stored with other words; pass --list-id to keep both, or --restart to replace it"
            )
        repository.upsert_word_list(session, {
            "id": list_id, "source": request.source, "words": words, "font": _font_label(request.font, font_file),
            "font_size": request.font_size, "image_size": request.image_size,
        })
        for layer in request.layers:
            found = repository.find_jobs(session, KIND, request.model_id, layer=layer)
            if found:
                job = found[0]
                meta = states.meta(job.state_uri) if job.state_uri else None
                if _finished_elsewhere(session, request, layer, list_id, meta, existing):
                    continue
                if request.restart or (meta is not None and meta["plan"] != _plan_record(request, layer, list_id, words_sha)):
                    _drop_chunks(states, job.id, meta, job.state_uri)
                    repository.checkpoint_job(session, job.id, 0, None, total_items=len(words))
                    repository.reset_job(session, job.id)
                elif job.state == "done":
                    continue
                else:
                    release_orphans(session, [job])
            else:
                job = repository.ensure_job(session, KIND, request.model_id, layer=layer, total_items=len(words))
            todo[layer] = job
        session.commit()
        return {layer: repository.find_jobs(session, KIND, request.model_id, layer=layer)[0] for layer in todo}


def _finished_elsewhere(session, request: WordsRequest, layer: str, list_id: str, meta: dict | None, existing) -> bool:
    """Whether this word list's results for the layer are stored while the layer's one job
    last ran another list: a layer holds the results of several lists side by side, and
    running them in turn (as the demo does) must not recompute each one again."""
    if request.restart or existing is None or list(existing.words) != list(request.words):
        return False
    if meta is not None and meta["plan"]["word_list"] == list_id:
        return False
    return repository.get_word_embedding(session, request.model_id, layer, list_id) is not None


def _font_label(requested: str | None, resolved: str) -> str:
    """A font file name (portable across machines) unless the user gave a path."""
    from pathlib import Path

    from precompute.world.fonts import DEFAULT_FONT

    if requested and ("/" in requested or "\\" in requested):
        return resolved
    return Path(requested or DEFAULT_FONT).name


def _drop_chunks(states: StateStore, job_id: int, meta: dict | None, uri: str | None) -> None:
    for chunk in (meta or {}).get("chunks", []):
        states.delete(chunk)
    states.delete(uri)
    states.cleanup(f"{KIND}-{job_id}-", set())


def run_words_pass(task: WordsTask, *, loaded=None, progress: Progress | None = None) -> dict:
    """Run (or resume) the pass of `task`; usable in-process and as a Ray task."""
    from store.loading import load_registered

    set_threads(task.threads)
    request = task.request
    engine, sessions = sessions_for(task.store)
    try:
        with sessions() as session:
            jobs = {layer: repository.find_jobs(session, KIND, request.model_id, layer=layer)[0] for layer in task.layers}
        with claimed(sessions, jobs, KIND) as rows:
            if loaded is None:
                with sessions() as session:
                    loaded = load_registered(session, request.model_id, device=request.device)
            work = _WordsPass(task, rows, loaded, StateStore(task.store.states), BlobStore(task.store.blob_url))
            cadence = Cadence(request.checkpoint_every, request.checkpoint_seconds)
            result = run_pass(sessions, work, rows, len(request.words), cadence, progress)
        return {"words": result.items}
    finally:
        engine.dispose()


class _WordsPass:
    """The loop's work: items are the words, a layer's state is its chunks of activation rows
    (each checkpoint adds the rows since the last one); the last checkpoint writes the results."""

    def __init__(self, task: WordsTask, jobs: dict, loaded, states: StateStore, blobs: BlobStore) -> None:
        self.task, self.request, self.loaded, self.states, self.blobs = task, task.request, loaded, states, blobs
        self.words = list(task.request.words)
        self.job_ids = {layer: job.id for layer, job in jobs.items()}
        self.chunks: dict[str, list[str]] = {}
        self.buffers: dict[str, list[np.ndarray]] = {}
        self.starts: dict[str, int] = {}
        self.fresh: dict[str, tuple[str, int] | None] = {}
        for layer, job in jobs.items():
            meta = states.meta(job.state_uri) if job.state_uri else {"chunks": []}
            self.chunks[layer] = list(meta.get("chunks", [])) + ([job.state_uri] if job.state_uri else [])
            self.buffers[layer], self.starts[layer] = [], job.cursor

    def batches(self, start: int):
        size, font, font_size, transform = self.request.image_size, self.request.font, self.request.font_size, self.loaded.preprocess

        def load(item):
            index, word = item
            return index, transform(render_word(word, size, font, font_size)), None

        return iter_batches(list(enumerate(self.words)), self.request.batch_size, None, None, start=start, load=load,
                            threads=self.request.loader_threads)

    def compute(self, batch, layers: list[str]) -> None:
        values = ranking_values(self.loaded, batch.images, layers)
        for layer in layers:
            self.buffers[layer].append(values[layer][0].cpu().numpy())

    def save(self, layer: str, cursor: int, done: bool) -> Checkpoint | None:
        self.fresh[layer] = None
        if cursor != self.starts[layer]:
            rows = np.concatenate(self.buffers[layer]).astype(np.float32)
            plan = _plan_record(self.request, layer, self.task.list_id, self.task.words_sha)
            meta = {"plan": plan, "chunks": self.chunks[layer], "start": self.starts[layer], "stop": cursor}
            name = f"{KIND}-{self.job_ids[layer]}-{self.starts[layer]:09d}-{cursor:09d}"
            self.fresh[layer] = (self.states.save(name, {"rows": rows}, meta), cursor)
        chunks = self.chunks[layer] + ([self.fresh[layer][0]] if self.fresh[layer] else [])
        if done:
            return Checkpoint(chunks[-1], self._results(layer, chunks))
        return Checkpoint(self.fresh[layer][0]) if self.fresh[layer] else None

    def committed(self, layer: str, checkpoint: Checkpoint) -> None:
        if self.fresh[layer] is not None:
            uri, cursor = self.fresh[layer]
            self.chunks[layer].append(uri)
            self.buffers[layer], self.starts[layer] = [], cursor
        if checkpoint.write is not None:  # done: the last chunk's metadata finds all the rows
            for uri in self.chunks[layer][:-1]:
                self.states.delete(uri)
            self.states.cleanup(f"{KIND}-{self.job_ids[layer]}-", {self.chunks[layer][-1]})

    def _results(self, layer: str, chunk_uris: list[str]):
        """Every unit's top words and the layer's word embedding, from all saved rows."""
        words, job_id, request = self.words, self.job_ids[layer], self.request
        parts, covered = [], 0
        for uri in chunk_uris:
            arrays, meta = self.states.load(uri)
            if meta["start"] != covered:
                raise MicroscopeError(f"words job {job_id}: its saved rows are not contiguous; re-run with --restart")
            parts.append(arrays["rows"])
            covered = meta["stop"]
        if covered != len(words):
            raise MicroscopeError(f"words job {job_id}: {covered} of {len(words)} words saved; re-run to finish")
        activations = np.concatenate(parts)
        index, values = top_words(torch.from_numpy(activations), request.top)
        vectors, mean = embeddings(activations)
        vectors_uri = self.blobs.put(_npy(vectors), ".npy")
        mean_uri = self.blobs.put(_npy(mean), ".npy")
        list_id = self.task.list_id

        def write(session) -> None:
            layer_row = repository.get_layer(session, request.model_id, layer)
            unit_id_of = repository.unit_ids(session, layer_row.id)
            ids = [unit_id_of[u] for u in range(activations.shape[1])]
            rows = [
                {"unit_id": ids[u], "word_list_id": list_id, "rank": rank, "word": words[int(index[u, rank])],
                 "activation": float(values[u, rank])}
                for u in range(activations.shape[1])
                for rank in range(index.shape[1])
            ]
            repository.replace_word_activations(session, list_id, ids, rows)
            repository.upsert_word_embedding(session, layer_row.id, list_id, vectors_uri, mean_uri)

        return write


def load_word_embeddings(session, blobs: BlobStore, model_id: str, layer: str, list_id: str):
    """The `precompute.words.WordEmbeddings` of a layer, for nearest neighbours and arithmetic."""
    from precompute.words import WordEmbeddings

    row = repository.get_word_embedding(session, model_id, layer, list_id)
    word_list = repository.get_word_list(session, list_id)
    if row is None or word_list is None:
        raise MicroscopeError(f"no word embedding of {model_id}/{layer} for word list '{list_id}'")
    vectors = np.load(io.BytesIO(blobs.get(row.vectors_uri)), allow_pickle=False)
    return WordEmbeddings(word_list.words, vectors)
