"""Per-neuron directions over a dataset, streamed in two passes (`004_…`, section 4).

Pass 1 (`MeanEffects`) sums every neuron's effect phi_n(I) over the dataset: b_n, its mean.
Pass 2 (`TopEffects`) keeps, per neuron, the `k` images (default 100) with the largest
||phi_n(I) - b_n||, with their centred effects (k x d per neuron: the only per-neuron memory).
`directions` then takes r_n, the first principal component of those k centred effects (the
top right-singular vector, as the authors take it), with its sign chosen so that most of
them project positively, and the k-th largest norm as the neuron's significance threshold.

Both accumulators are exact to merge: sums in a fixed (shard) order in float64, top-k by
(norm descending, dataset position ascending), so shards merge to what one pass would keep,
and a resumed pass (same batches) ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

TOP_IMAGES = 100
_EMPTY_POSITION = np.iinfo(np.int64).max
_UPDATE_BYTES = 64 << 20  # bound on the candidates one update holds at once


class MeanEffects:
    """Running sum of each neuron's effects, for b_n."""

    def __init__(self, units: int, dim: int) -> None:
        self.sum = np.zeros((units, dim), dtype=np.float64)
        self.count = 0

    def update(self, effects: torch.Tensor) -> None:
        """effects [B, N, d]."""
        if effects.shape[0]:
            self.sum += effects.double().sum(dim=0).cpu().numpy()
            self.count += int(effects.shape[0])

    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no images were accumulated")
        return (self.sum / self.count).astype(np.float32)

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return {"sum": self.sum}, {"count": self.count}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict) -> "MeanEffects":
        acc = cls(*arrays["sum"].shape)
        acc.sum = arrays["sum"].astype(np.float64, copy=True)
        acc.count = int(meta["count"])
        return acc

    @classmethod
    def merge(cls, parts: Sequence["MeanEffects"]) -> "MeanEffects":
        """In the given (shard) order, so the sum is the same on every run."""
        merged = cls(*parts[0].sum.shape)
        for part in parts:
            merged.sum += part.sum
            merged.count += part.count
        return merged


class TopEffects:
    """Per neuron, the k images with the largest ||phi_n - b_n|| (ties: the smaller dataset
    position): their norms, positions and centred effects, in k slots (unordered; an empty slot
    has norm -inf)."""

    def __init__(self, mean: np.ndarray, k: int = TOP_IMAGES) -> None:
        if k < 1:
            raise ValueError("k must be at least 1")
        units, dim = mean.shape
        self.mean = np.asarray(mean, dtype=np.float32)
        self.k = k
        self.norms = np.full((units, k), -np.inf, dtype=np.float32)
        self.positions = np.full((units, k), _EMPTY_POSITION, dtype=np.int64)
        self.effects = np.zeros((units, k, dim), dtype=np.float32)

    @property
    def units(self) -> int:
        return self.mean.shape[0]

    def update(self, effects: torch.Tensor, positions: torch.Tensor | np.ndarray) -> None:
        """effects [B, N, d] of the images at dataset `positions` [B]."""
        batch = effects.shape[0]
        if batch == 0:
            return
        centred = effects.float().cpu() - torch.from_numpy(self.mean)[None]
        norms = centred.norm(dim=-1).T.contiguous().numpy()  # [N, B]
        centred = centred.transpose(0, 1).numpy()  # [N, B, d] (a view)
        positions = np.asarray(positions, dtype=np.int64)
        # only neurons where some new image reaches the current k-th can change
        changed = np.nonzero((norms >= self.norms.min(axis=1, keepdims=True)).any(axis=1))[0]
        self._merge_into(changed, norms[changed], np.broadcast_to(positions, (len(changed), batch)), centred, changed)

    def _merge_into(self, rows: np.ndarray, norms: np.ndarray, positions: np.ndarray, effects: np.ndarray,
                    effect_rows: np.ndarray) -> None:
        """Merge candidates (norms, positions [R, M], effects[effect_rows] [R, M, d]) into neurons
        `rows`. Slots are unordered: an image that enters takes the slot of one that leaves (the
        j-th leaving slot, ascending, for the j-th entering candidate), so only entering effects
        are copied."""
        k = self.k
        step = max(1, _UPDATE_BYTES // max(1, (k + norms.shape[1]) * 8 * 4))
        for begin in range(0, len(rows), step):
            units = rows[begin:begin + step]
            new_norms, new_positions = norms[begin:begin + step], positions[begin:begin + step]
            cand_norms = np.concatenate([self.norms[units], new_norms], axis=1)
            cand_positions = np.concatenate([self.positions[units], new_positions], axis=1)
            # norm descending, then position ascending: lexsort's last key is the primary one
            order = np.lexsort((cand_positions, -cand_norms), axis=1)[:, :k]
            selected = np.zeros(cand_norms.shape, dtype=bool)
            np.put_along_axis(selected, order, True, axis=1)
            leaving, entering = ~selected[:, :k], selected[:, k:]
            counts = entering.sum(axis=1)
            if not counts.any():
                continue
            slots = np.argsort(~leaving, axis=1, kind="stable")  # leaving slots first, ascending
            incoming = np.argsort(~entering, axis=1, kind="stable")  # entering candidates first
            r, j = np.nonzero(np.arange(min(k, entering.shape[1]))[None, :] < counts[:, None])
            slot, candidate = slots[r, j], incoming[r, j]
            self.norms[units[r], slot] = new_norms[r, candidate]
            self.positions[units[r], slot] = new_positions[r, candidate]
            self.effects[units[r], slot] = effects[effect_rows[begin:begin + step][r], candidate]

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return {"mean": self.mean, "norms": self.norms, "positions": self.positions, "effects": self.effects}, {"k": self.k}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict) -> "TopEffects":
        acc = cls(arrays["mean"], int(meta["k"]))
        acc.norms = arrays["norms"].copy()
        acc.positions = arrays["positions"].copy()
        acc.effects = arrays["effects"].copy()
        return acc

    @classmethod
    def merge(cls, parts: Sequence["TopEffects"]) -> "TopEffects":
        merged = cls(parts[0].mean, parts[0].k)
        everything = np.arange(merged.units)
        for part in parts:
            merged._merge_into(everything, part.norms, part.positions, part.effects, everything)
        return merged

    @property
    def kept(self) -> np.ndarray:
        """[N] how many images each neuron keeps (fewer than k on a small dataset)."""
        return np.isfinite(self.norms).sum(axis=1)


def _eigh_single_threaded(matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched eigh of small matrices: on the CPU one thread each is many times faster than
    LAPACK's threads fighting over a 100 x 100 matrix."""
    if matrices.device.type != "cpu":
        return torch.linalg.eigh(matrices)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(matrices)
    finally:
        torch.set_num_threads(threads)


def directions(top: TopEffects) -> tuple[np.ndarray, np.ndarray]:
    """(r [N, d] unit rows, thresholds [N]): each neuron's first principal component of its kept
    centred effects, signed so that most project positively (ties: their sum decides), and its
    smallest kept norm (the k-th largest over the dataset). A neuron whose kept effects are all
    zero gets a zero direction."""
    units, k, dim = top.effects.shape
    kept = top.kept
    out = np.zeros((units, dim), dtype=np.float32)
    step = max(1, _UPDATE_BYTES // (k * dim * 4 * 3))
    for begin in range(0, units, step):
        end = min(units, begin + step)
        rows = torch.from_numpy(top.effects[begin:end]).double()  # empty slots are zero rows: no effect on the PCs
        # the top right-singular vector, from the smaller Gram matrix (k x k) in float64
        gram = rows @ rows.transpose(1, 2)  # [n, k, k]
        eigenvalues, eigenvectors = _eigh_single_threaded(gram)
        first = torch.einsum("nkd,nk->nd", rows, eigenvectors[:, :, -1])
        top_value = eigenvalues[:, -1]
        first = first / first.norm(dim=1, keepdim=True).clamp_min(1e-300)
        projections = torch.einsum("nkd,nd->nk", rows, first)
        valid = torch.from_numpy(np.isfinite(top.norms[begin:end]))
        positive = ((projections > 0) & valid).sum(dim=1)
        negative = ((projections < 0) & valid).sum(dim=1)
        flip = (negative > positive) | ((negative == positive) & (projections.sum(dim=1) < 0))
        first = torch.where(flip[:, None], -first, first)
        first = torch.where((top_value > 0)[:, None], first, torch.zeros_like(first))
        out[begin:end] = first.float().numpy()
    smallest = np.where(np.isfinite(top.norms), top.norms, np.inf).min(axis=1)
    thresholds = np.where(kept > 0, smallest, 0.0).astype(np.float32)
    return out, thresholds
