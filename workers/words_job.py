"""`microscope precompute words`: rastered words through the model, resumable.

One job (kind `words`, shard 0) per layer; one pass over the word list serves all requested
layers. Each batch of words is rendered (precompute.words) in a background thread while the
model runs. Every checkpoint saves the activation rows computed since the previous one as a
chunk and commits the job's cursor with the chunk's URI; a chunk's metadata lists the
chunks before it, so the committed state URI alone finds every row. A killed run re-run
continues at the cursor with the same batches. At the end each layer's (words x units)
matrix gives every unit's top words (`word_activations`) and the layer's image-based word
embedding (`word_embeddings`: vectors minus their mean, as .npy blobs), written in the same
transaction that marks the job done.
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
from workers.engines import Progress, StoreConfig, sessions_for, set_threads
from workers.locks import driver_lock
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
    restart: bool = False
    checkpoint_every: int = 20
    checkpoint_seconds: float = 60.0
    list_id: str | None = None
    threads: int = 0
    loader_threads: int = 1

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


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def run_words(store: StoreConfig, request: WordsRequest, *, show_progress: bool = True, loaded=None) -> dict:
    from store.loading import load_registered, require_layers, require_model

    request.validate()
    started = time.monotonic()
    font_file = check_font(request.font)
    engine, sessions = sessions_for(store)
    states = StateStore(store.states)
    blobs = BlobStore(store.blob_url)
    try:
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
                                   "words": len(request.words)}
        with driver_lock(engine, f"words of {request.model_id}"):
            jobs = _plan(sessions, states, request, list_id, words_sha, font_file)
            if not jobs:
                summary.update(status="already done", seconds=round(time.monotonic() - started, 2))
                return summary
            set_threads(request.threads)
            rate = _run(sessions, states, blobs, loaded, request, list_id, jobs, show_progress)
        summary.update(status="done", words_per_second=rate, seconds=round(time.monotonic() - started, 2))
        return summary
    finally:
        engine.dispose()


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
            plan = {"model": request.model_id, "layer": layer, "word_list": list_id, "words_sha": words_sha,
                    "batch_size": request.batch_size, "top": request.top}
            found = repository.find_jobs(session, KIND, request.model_id, layer=layer)
            if found:
                job = found[0]
                meta = states.meta(job.state_uri) if job.state_uri else None
                if request.restart or (meta is not None and meta["plan"] != plan):
                    _drop_chunks(states, job.id, meta, job.state_uri)
                    repository.checkpoint_job(session, job.id, 0, None, total_items=len(words))
                    repository.reset_job(session, job.id)
                elif job.state == "done":
                    continue
                elif job.state in ("running", "failed"):  # under the driver lock: an orphan
                    repository.reset_job(session, job.id)
            else:
                job = repository.ensure_job(session, KIND, request.model_id, layer=layer, total_items=len(words))
            todo[layer] = (job.id, plan)
        session.commit()
    return todo


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


def _run(sessions, states, blobs, loaded, request: WordsRequest, list_id: str, todo: dict, show_progress: bool) -> float | None:
    words = list(request.words)
    total = len(words)
    jobs, plans, cursors, chunks, buffers, starts = {}, {}, {}, {}, {}, {}
    with sessions() as session:
        for layer, (job_id, plan) in todo.items():
            job = repository.claim_job(session, job_id=job_id)
            if job is None:
                raise MicroscopeError(f"words job {job_id} ({layer}) is running elsewhere")
            jobs[layer], plans[layer] = job, plan
            cursors[layer] = job.cursor
            meta = states.meta(job.state_uri) if job.state_uri else {"chunks": []}
            chunks[layer] = list(meta.get("chunks", [])) + ([job.state_uri] if job.state_uri else [])
            buffers[layer], starts[layer] = [], job.cursor
        session.commit()

    def checkpoint(layers: list[str]) -> None:
        uris = {}
        for layer in layers:
            if cursors[layer] == starts[layer]:
                continue
            rows = np.concatenate(buffers[layer]).astype(np.float32)
            meta = {"plan": plans[layer], "chunks": chunks[layer], "start": starts[layer], "stop": cursors[layer]}
            uris[layer] = states.save(f"{KIND}-{jobs[layer].id}-{starts[layer]:09d}-{cursors[layer]:09d}", {"rows": rows}, meta)
        with sessions() as session:
            for layer, uri in uris.items():
                repository.checkpoint_job(session, jobs[layer].id, cursors[layer], uri, total_items=total)
            session.commit()
        for layer, uri in uris.items():
            chunks[layer].append(uri)
            buffers[layer], starts[layer] = [], cursors[layer]

    size, font, font_size, transform = request.image_size, request.font, request.font_size, loaded.preprocess

    def load(item):
        index, word = item
        return index, transform(render_word(word, size, font, font_size)), None

    open_layers = [layer for layer in jobs if cursors[layer] < total]
    rate = None
    if open_layers:
        begin = min(cursors[layer] for layer in open_layers)
        progress = Progress(total, begin, f"words {','.join(open_layers)}", "word", show_progress)
        last, since, pass_started = time.monotonic(), 0, time.monotonic()
        try:
            for batch in iter_batches(list(enumerate(words)), request.batch_size, None, None, start=begin,
                                      load=load, threads=request.loader_threads):
                active = [layer for layer in open_layers if cursors[layer] <= batch.start]
                values = ranking_values(loaded, batch.images, active)
                for layer in active:
                    buffers[layer].append(values[layer][0].cpu().numpy())
                    cursors[layer] = batch.stop
                progress.advance(batch.stop - batch.start)
                since += 1
                if batch.stop >= total or since >= request.checkpoint_every or time.monotonic() - last >= request.checkpoint_seconds:
                    checkpoint(active)
                    since, last = 0, time.monotonic()
        finally:
            progress.close()
        seconds = time.monotonic() - pass_started
        rate = round((total - begin) / seconds, 1) if seconds > 0 else None
    for layer in jobs:
        _finish_layer(sessions, states, blobs, loaded, request, list_id, layer, jobs[layer], chunks[layer], words)
    return rate


def _finish_layer(sessions, states, blobs, loaded, request, list_id, layer, job, chunk_uris, words) -> None:
    parts, covered = [], 0
    for uri in chunk_uris:
        arrays, meta = states.load(uri)
        if meta["start"] != covered:
            raise MicroscopeError(f"words job {job.id}: its saved rows are not contiguous; re-run with --restart")
        parts.append(arrays["rows"])
        covered = meta["stop"]
    if covered != len(words):
        raise MicroscopeError(f"words job {job.id}: {covered} of {len(words)} words saved; re-run to finish")
    activations = np.concatenate(parts)
    index, values = top_words(torch.from_numpy(activations), request.top)
    vectors, mean = embeddings(activations)
    vectors_uri = blobs.put(_npy(vectors), ".npy")
    mean_uri = blobs.put(_npy(mean), ".npy")
    with sessions() as session:
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
        repository.checkpoint_job(session, job.id, len(words), chunk_uris[-1], done=True, total_items=len(words))
        session.commit()
    for uri in chunk_uris[:-1]:
        states.delete(uri)
    states.cleanup(f"{KIND}-{job.id}-", {chunk_uris[-1]})


def load_word_embeddings(session, blobs: BlobStore, model_id: str, layer: str, list_id: str):
    """The `precompute.words.WordEmbeddings` of a layer, for nearest neighbours and arithmetic."""
    from precompute.words import WordEmbeddings

    row = repository.get_word_embedding(session, model_id, layer, list_id)
    word_list = repository.get_word_list(session, list_id)
    if row is None or word_list is None:
        raise MicroscopeError(f"no word embedding of {model_id}/{layer} for word list '{list_id}'")
    vectors = np.load(io.BytesIO(blobs.get(row.vectors_uri)), allow_pickle=False)
    return WordEmbeddings(word_list.words, vectors)
