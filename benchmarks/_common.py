"""Shared helpers for benchmark scripts: interleaved timing and a machine description."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable


def machine() -> dict:
    import torch

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": "cpu",
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def interleaved(candidates: dict[str, Callable[[], None]], repeats: int, sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Time each candidate `repeats` times, alternating between them so that drifts in the
    machine's load (other processes, clocks) hit every candidate alike."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def stored_imagenet(url: str, blob_url: str, model_id: str, dimension: int, seed: int = 0) -> None:
    """ImageNet's text pool with random unit-length class embeddings under a registered model,
    written through the store's own write, unless it holds some already: a stand-in that
    measures the live pages' read path, not the text tower (80,000 prompts, hours on a CPU)."""
    import numpy as np

    from precompute.text_pools import IMAGENET_SOURCE, pool_texts
    from store.blobs import BlobStore
    from store.session import make_engine, make_sessionmaker
    from store.text_pools import add_pool, pool_embeddings

    def random_rows() -> np.ndarray:
        rows = np.random.default_rng(seed).standard_normal((len(texts), dimension)).astype(np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    texts = pool_texts("imagenet").texts
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            pool, _ = add_pool(session, "imagenet", texts, IMAGENET_SOURCE)
            pool_embeddings(session, BlobStore(blob_url), model_id, pool, random_rows)
            session.commit()
    finally:
        engine.dispose()


def imagenet_reader(url: str, blob_url: str, model_id: str) -> Callable[[], object]:
    """What a live page does per request for ImageNet's labels: find the model's stored pool
    embeddings (one query), read their blob (once per process), attach them to the label set."""
    from app.cache import TTLCache
    from app.label_sets import stored_labels
    from app.vectors import load_npy
    from precompute.zeroshot import label_set
    from store.blobs import BlobStore
    from store.queries import model_row
    from store.session import make_engine, make_sessionmaker

    sessions = make_sessionmaker(make_engine(url))
    blobs, cache, imagenet = BlobStore(blob_url), TTLCache(None, 4), label_set("imagenet")

    def read() -> object:
        with sessions() as session:
            model = model_row(session, model_id)
            labels = stored_labels(session, model, imagenet, lambda uri: cache.get((uri,), lambda: load_npy(blobs, uri)))
        if labels is None:
            raise RuntimeError(f"{model_id} has no stored ImageNet embeddings")
        return labels

    return read
