"""The background loader: fixed batches, corrupt images skipped and reported."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from precompute.loader import iter_batches


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def _to_tensor(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).mean()


def test_batches_are_fixed_ranges_and_corrupt_images_only_shrink_their_batch():
    blobs = {i: _png(i) for i in range(10)}
    blobs[4] = b"not an image"
    blobs[5] = _png(5)[:30]  # truncated
    items = [(i, i) for i in range(10)]
    batches = list(iter_batches(items, 3, blobs.__getitem__, _to_tensor))
    assert [(b.start, b.stop) for b in batches] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert batches[1].positions.tolist() == [3] and [p for p, _ in batches[1].skipped] == [4, 5]
    assert batches[1].index == [3]
    resumed = list(iter_batches(items, 3, blobs.__getitem__, _to_tensor, start=6, threads=2))
    assert [(b.start, b.stop) for b in resumed] == [(6, 9), (9, 10)]
    assert torch.equal(resumed[0].images, batches[2].images)


def test_unexpected_errors_reach_the_consumer():
    def read(handle):
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        list(iter_batches([(0, 0)], 1, read, _to_tensor))
