"""Batches of decoded, preprocessed images, prepared in the background while the model runs.

A batch is a fixed range of the input list (`items[i : i + batch_size]`), never "the next B
readable images": an unreadable image only makes its own batch smaller, so every run, shard
and resumed run sees exactly the same batches. Decoding happens in a background thread
(PIL and torch release the GIL for the heavy parts), `prefetch` batches ahead, optionally
spread over a few more threads, so loading overlaps the forward pass.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from precompute.images import DECODE_ERRORS, decode_image


@dataclass
class Batch:
    start: int  # index in the item list of the batch's first item
    stop: int
    positions: torch.Tensor  # (n,) int64 positions of the images that decoded
    images: torch.Tensor  # (n, 3, S, S)
    index: list[int] = field(default_factory=list)  # item indices of the decoded images
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (position, reason)


def _load_one(item: tuple[int, Any], read: Callable[[Any], bytes], transform: Callable) -> tuple[int, torch.Tensor | None, str | None]:
    position, handle = item
    try:
        return position, transform(decode_image(read(handle))), None
    except DECODE_ERRORS as error:
        return position, None, f"{type(error).__name__}: {error}"


def _assemble(start: int, results: list) -> Batch:
    tensors, positions, index, skipped = [], [], [], []
    for offset, (position, tensor, problem) in enumerate(results):
        if tensor is None:
            skipped.append((position, problem))
        else:
            tensors.append(tensor)
            positions.append(position)
            index.append(start + offset)
    images = torch.stack(tensors) if tensors else torch.empty(0)
    return Batch(start, start + len(results), torch.tensor(positions, dtype=torch.int64), images, index, skipped)


def iter_batches(
    items: Sequence[tuple[int, Any]],
    batch_size: int,
    read: Callable[[Any], bytes],
    transform: Callable[[Image.Image], torch.Tensor],
    *,
    start: int = 0,
    prefetch: int = 2,
    threads: int = 1,
    load: Callable[[tuple[int, Any]], tuple[int, torch.Tensor | None, str | None]] | None = None,
) -> Iterator[Batch]:
    """Batches of `items` ((position, handle) pairs) from item index `start`, in order.

    `read(handle)` gives the encoded bytes, `transform` turns a PIL image into a tensor (the
    model's preprocess). `load` replaces read+decode+transform for sources that are not
    encoded files (rendered words). Images that fail to read or decode are reported in
    `Batch.skipped`, never raised.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    load = load or (lambda item: _load_one(item, read, transform))
    ranges = [(i, min(i + batch_size, len(items))) for i in range(start, len(items), batch_size)]
    if not ranges:
        return
    out: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    done = object()
    pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def put(value) -> bool:
        while not stop.is_set():
            try:
                out.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for lo, hi in ranges:
                chunk = items[lo:hi]
                results = list(pool.map(load, chunk)) if pool else [load(item) for item in chunk]
                if not put(_assemble(lo, results)):
                    return
            put(done)
        except BaseException as error:  # surfaced in the consumer
            put(error)

    worker = threading.Thread(target=produce, name="microscope-loader", daemon=True)
    worker.start()
    try:
        while True:
            value = out.get()
            if value is done:
                return
            if isinstance(value, BaseException):
                raise value
            yield value
    finally:
        stop.set()
        worker.join(timeout=5)
        if pool:
            pool.shutdown(wait=False, cancel_futures=True)
