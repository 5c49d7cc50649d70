"""Order-preserving integer keys: how the examples pass makes every selection exact.

A float32 activation and an image position pack into one int64 whose integer order is the
ranking order, with ties between equal activations broken by position. Top-k and bottom-k
then become `torch.topk` over unique integers: no two candidates ever compare equal, so
the result cannot depend on the order in which batches or shards arrive, and merging two
partial top-k lists is exactly the top-k of their union.

    top key    = ord(value) << 32 | (2**32 - 1 - position)   larger value first, then lower position
    bottom key = ord(value) << 32 | position                 smaller value first, then lower position

`ord` maps the float's bits to an int32 in the float's order (-0.0 sorts just below +0.0,
NaN is never produced by a well-formed model and sorts at the ends). Positions are below 2**32.

Sampling keys (for the conditional-probability reservoirs) are pseudo-random but unique:
31 bits from the image's content hash above the 32-bit position.
"""

from __future__ import annotations

import numpy as np
import torch

POSITION_BITS = 32
POSITION_MASK = (1 << POSITION_BITS) - 1
MAX_POSITION = POSITION_MASK
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
TOP_EMPTY = INT64_MIN  # loses against every real top key
BOTTOM_EMPTY = INT64_MAX  # loses against every real bottom key
SAMPLE_EMPTY = INT64_MAX


def float_order(values: torch.Tensor) -> torch.Tensor:
    """int64 tensor whose order is the order of the float32 `values`."""
    bits = values.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def order_to_float(order: torch.Tensor) -> torch.Tensor:
    bits = torch.where(order < 0, order ^ 0x7FFFFFFF, order)
    return bits.to(torch.int32).view(torch.float32)


def top_keys(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Keys for `values` (..., n) of images at `positions` (broadcastable int64)."""
    return (float_order(values) << POSITION_BITS) | (POSITION_MASK - positions.to(torch.int64))


def bottom_keys(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return (float_order(values) << POSITION_BITS) | positions.to(torch.int64)


def decode_top(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values float32, positions int64, valid bool) of top keys."""
    valid = keys != TOP_EMPTY
    values = order_to_float(keys >> POSITION_BITS)
    positions = POSITION_MASK - (keys & POSITION_MASK)
    return values, positions, valid


def decode_bottom(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    valid = keys != BOTTOM_EMPTY
    values = order_to_float(keys >> POSITION_BITS)
    positions = keys & POSITION_MASK
    return values, positions, valid


def sample_keys(sha256_hex: list[str] | np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Unique pseudo-random int64 keys: 31 bits of each image's sha256 above its position.

    The K images of smallest key in a set are a uniform random sample of it, fixed by content,
    so every engine, shard order and re-run picks the same ones.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size and (positions.min() < 0 or positions.max() > MAX_POSITION):
        raise ValueError("positions must lie in [0, 2**32)")
    high = np.array([int(h[:8], 16) >> 1 for h in sha256_hex], dtype=np.int64)
    return (high << POSITION_BITS) | positions


def sample_positions(keys: torch.Tensor) -> torch.Tensor:
    return keys & POSITION_MASK
