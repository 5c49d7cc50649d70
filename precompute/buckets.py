"""Conditional-probability samples: a few images per activation bucket, in one streaming pass.

The Distill appendix defines uniformly spaced buckets between a unit's most inhibitory and
most excitatory activation and samples a fixed number of images in each. The bucket edges
need the final min and max, which a single pass only knows at its end, so sampling happens
on a finer, fixed grid decided before the pass and the buckets are filled from it afterwards:

1. During the pass, every unit has `sample_bins` uniform "fine" bins over a range fixed
   before the pass (the calibration range widened by its width on each side, see
   `examples.calibrated_range`) plus one underflow and one overflow bin. Each fine bin has
   `per_bucket` slots; an image goes to the slot given by its *sampling key*
   (`keys.sample_keys`: 31 bits of its content hash above its position, unique per image)
   and each slot keeps the image of smallest key (min-wise hashing). A slot is a uniform
   random pick among the bin's images that hash to it, so the filled slots of a bin are a
   uniform sample of it without repeats. Keeping a minimum is a scatter-min, fully
   vectorised, and it does not depend on the order in which images, batches or shards
   arrive: merging two reservoirs is an elementwise minimum, exactly the reservoir of the
   union.
2. At the end, `select_buckets` draws the unit's `buckets` uniform buckets between its exact
   min and max and fills each with the `per_bucket` smallest-key images among all candidates
   that fall inside: every fine reservoir plus the unit's exact top-k and bottom-k (which
   reach the extremes that the calibration range may not cover).

Both steps are deterministic functions of exact, order-independent state, so local runs,
Ray runs, resumed runs and differently ordered shards store the same samples.
"""

from __future__ import annotations

import numpy as np
import torch

from precompute.keys import SAMPLE_EMPTY


def empty_reservoir(units: int, bins: int, per_bin: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, values) of shape (units, bins, per_bin): every slot empty."""
    keys = torch.full((units, bins, per_bin), SAMPLE_EMPTY, dtype=torch.int64, device=device)
    values = torch.zeros((units, bins, per_bin), dtype=torch.float32, device=device)
    return keys, values


def slot_of(keys: torch.Tensor, slots: int) -> torch.Tensor:
    """The reservoir slot of each sampling key: from its hash bits, not its position."""
    return torch.remainder(keys >> 32, slots)


def reservoir_update(
    res_keys: torch.Tensor,
    res_values: torch.Tensor,
    bins: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
) -> None:
    """Offer a batch to the reservoirs, in place.

    res_keys/res_values: (units, bins, slots). bins: (batch, units) int64, the fine bin of
    each value; keys: (batch,) sampling keys; values: (batch, units) float32.
    """
    units, nbins, slots = res_keys.shape
    flat_keys = res_keys.view(-1)
    flat_values = res_values.view(-1)
    device = res_keys.device
    keys = keys.to(device, torch.int64)
    unit_base = torch.arange(units, device=device, dtype=torch.int64).mul_(nbins)
    index = (bins + unit_base).mul_(slots).add_(slot_of(keys, slots).view(-1, 1)).view(-1)
    candidate_keys = keys.view(-1, 1).expand(-1, units).reshape(-1)
    flat_keys.scatter_reduce_(0, index, candidate_keys, reduce="amin", include_self=True)
    # Keys are unique, so at most one candidate per slot matches the slot's new minimum.
    won = flat_keys[index] == candidate_keys
    flat_values[index[won]] = values.reshape(-1)[won].to(flat_values.dtype)


def reservoir_merge(
    a_keys: torch.Tensor, a_values: torch.Tensor, b_keys: torch.Tensor, b_values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reservoirs of the union of two disjoint image sets."""
    take_b = b_keys < a_keys
    return torch.where(take_b, b_keys, a_keys), torch.where(take_b, b_values, a_values)


def select_buckets(
    vmin: np.ndarray,
    vmax: np.ndarray,
    cand_keys: np.ndarray,
    cand_values: np.ndarray,
    buckets: int,
    per_bucket: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fill `buckets` uniform buckets between each unit's min and max.

    cand_keys/cand_values: (units, candidates); keys equal to SAMPLE_EMPTY are ignored and a
    key seen twice in a row (an image that is both in a reservoir and in the top-k) counts
    once. Returns (edges (units, buckets+1) float64, keys (units, buckets, per_bucket) int64
    with SAMPLE_EMPTY where a bucket has fewer images, values float32 alike, counts
    (units, buckets) int64). Within a bucket, slots go by ascending sampling key.
    """
    units, n = cand_keys.shape
    vmin = np.asarray(vmin, dtype=np.float64)
    vmax = np.asarray(vmax, dtype=np.float64)
    steps = np.arange(buckets + 1, dtype=np.float64) / buckets
    edges = vmin[:, None] + (vmax - vmin)[:, None] * steps[None, :]
    edges[:, -1] = vmax
    out_keys = np.full((units, buckets, per_bucket), SAMPLE_EMPTY, dtype=np.int64)
    out_values = np.zeros((units, buckets, per_bucket), dtype=np.float32)
    if n == 0:
        return edges, out_keys, out_values, np.zeros((units, buckets), dtype=np.int64)

    # Bucket b holds values in [edges[b], edges[b+1]), the last one also its upper edge; counted
    # against the stored edges themselves so that a stored sample always lies within its
    # bucket's stored low and high.
    values64 = cand_values.astype(np.float64)
    bucket = np.zeros((units, n), dtype=np.int64)
    for inner in range(1, buckets):
        bucket += values64 >= edges[:, inner : inner + 1]
    # Values outside [min, max] cannot happen for real candidates; guard anyway.
    outside = (cand_values < vmin[:, None]) | (cand_values > vmax[:, None])
    bucket[(cand_keys == SAMPLE_EMPTY) | outside] = buckets

    # Drop duplicate keys: sort each row by key and blank repeats.
    by_key = np.argsort(cand_keys, axis=1, kind="stable")
    keys_sorted = np.take_along_axis(cand_keys, by_key, axis=1)
    values_sorted = np.take_along_axis(cand_values, by_key, axis=1)
    bucket_sorted = np.take_along_axis(bucket, by_key, axis=1)
    repeat = np.zeros_like(keys_sorted, dtype=bool)
    repeat[:, 1:] = keys_sorted[:, 1:] == keys_sorted[:, :-1]
    bucket_sorted[repeat] = buckets

    # Stable sort by bucket keeps key order within a bucket.
    by_bucket = np.argsort(bucket_sorted, axis=1, kind="stable")
    keys_sorted = np.take_along_axis(keys_sorted, by_bucket, axis=1)
    values_sorted = np.take_along_axis(values_sorted, by_bucket, axis=1)
    bucket_sorted = np.take_along_axis(bucket_sorted, by_bucket, axis=1)
    index = np.broadcast_to(np.arange(n), (units, n))
    is_start = np.ones((units, n), dtype=bool)
    is_start[:, 1:] = bucket_sorted[:, 1:] != bucket_sorted[:, :-1]
    start = np.maximum.accumulate(np.where(is_start, index, 0), axis=1)
    rank = index - start
    keep = (rank < per_bucket) & (bucket_sorted < buckets)
    unit_index = np.broadcast_to(np.arange(units)[:, None], (units, n))
    out_keys[unit_index[keep], bucket_sorted[keep], rank[keep]] = keys_sorted[keep]
    out_values[unit_index[keep], bucket_sorted[keep], rank[keep]] = values_sorted[keep]
    counts = (out_keys != SAMPLE_EMPTY).sum(axis=2)
    return edges, out_keys, out_values, counts
