"""Sparse decomposition by orthogonal matching pursuit, batched in torch.

Each neuron's direction r_n (a vector in the joint image-text space) is written as a sparse
sum of m text embeddings out of a pool (`004_…`, section 4): greedily pick the atom most
correlated with what is left of r_n, re-fit the coefficients of every atom picked so far by
least squares, repeat m times. This is scikit-learn's `orthogonal_mp` (Cholesky variant), run
for many neurons at once: each step is one matrix product of a chunk of residuals with the
whole dictionary (BLAS-3 rather than one matrix-vector product per neuron), and the small
least-squares systems of the chunk are solved as one batch.

Same conventions as scikit-learn, so the two can be compared atom for atom: atoms are the
rows of `dictionary` as given (no hidden normalisation), the next atom maximises |⟨a, r⟩|,
and a neuron stops early when the best atom is already in its support (its residual is
numerically zero), when the best correlation is zero, or when the new atom is linearly
dependent on the chosen ones.

`text_dictionary` builds the dictionary from a pool's text embeddings: centred on the pool's
mean, then either every atom scaled to unit length (the default) or every embedding dimension
scaled to the same norm across the pool, times 100 (the authors' setting).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NORMALISATIONS = ("unit", "per-dimension")
MAX_TERMS = 128
DEFAULT_TERMS = 32
# Bytes the chunk's correlation matrix (neurons x atoms) may take; every other intermediate is smaller.
DEFAULT_MEMORY = 256 * 2**20


@dataclass(frozen=True)
class SparseCodes:
    """The decompositions of B targets, terms in the order OMP picked them.

    `atoms[b, j]` is the dictionary row of neuron b's j-th term and `coefficients[b, j]` its
    weight; where a neuron stopped early (`counts[b] < terms`) the rest is -1 and 0.
    `scores[b]` is the cosine between target b and its reconstruction (0 for a zero target).
    """

    atoms: torch.Tensor  # [B, m] int64
    coefficients: torch.Tensor  # [B, m] float
    counts: torch.Tensor  # [B] int64
    scores: torch.Tensor  # [B] float

    def ranked(self, b: int) -> list[tuple[int, float]]:
        """Neuron b's (atom, coefficient) pairs, largest |coefficient| first."""
        n = int(self.counts[b])
        pairs = list(zip(self.atoms[b, :n].tolist(), self.coefficients[b, :n].tolist()))
        return sorted(pairs, key=lambda pair: (-abs(pair[1]), pair[0]))

    def dense(self, atom_count: int) -> torch.Tensor:
        """[B, atom_count] coefficient matrix (as scikit-learn returns it, transposed)."""
        out = torch.zeros(len(self.counts), atom_count, dtype=self.coefficients.dtype)
        valid = self.atoms >= 0
        rows = torch.arange(len(self.counts)).unsqueeze(1).expand_as(self.atoms)
        out[rows[valid], self.atoms[valid]] = self.coefficients[valid]
        return out


def text_dictionary(embeddings: torch.Tensor, normalisation: str = "unit", *, scale: float = 100.0) -> torch.Tensor:
    """A pool's text embeddings [M, d], centred on their mean, as OMP atoms.

    "unit": every centred embedding scaled to unit length. "per-dimension": every embedding
    dimension (a column) scaled to norm `scale` across the pool, the authors' setting.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {', '.join(NORMALISATIONS)}, not {normalisation!r}")
    if embeddings.ndim != 2 or embeddings.shape[0] < 1:
        raise ValueError(f"embeddings must be [texts, dim], got {tuple(embeddings.shape)}")
    centred = embeddings - embeddings.mean(dim=0, keepdim=True)
    if normalisation == "unit":
        norms = centred.norm(dim=1, keepdim=True)
        return centred / torch.where(norms > 0, norms, torch.ones_like(norms))
    norms = centred.norm(dim=0, keepdim=True)
    return scale * centred / torch.where(norms > 0, norms, torch.ones_like(norms))


def _chunk_size(atom_count: int, itemsize: int, memory: int) -> int:
    # correlations and their absolute values: two [chunk, atoms] matrices
    return max(1, memory // max(1, 2 * atom_count * itemsize))


def omp(
    dictionary: torch.Tensor, targets: torch.Tensor, terms: int = DEFAULT_TERMS, *, memory: int = DEFAULT_MEMORY,
) -> SparseCodes:
    """m-term OMP of every row of `targets` [B, d] over the rows of `dictionary` [M, d].

    Computed in the dtype and on the device of `dictionary` (targets are moved there);
    results on the CPU. Memory: about `memory` bytes for a chunk's correlations, plus the
    chunk's chosen atoms (chunk x m x d).
    """
    if dictionary.ndim != 2 or targets.ndim != 2 or dictionary.shape[1] != targets.shape[1]:
        raise ValueError(f"dictionary [M, d] and targets [B, d] must share d, got {tuple(dictionary.shape)} "
                         f"and {tuple(targets.shape)}")
    atom_count = dictionary.shape[0]
    if not 1 <= terms <= min(atom_count, MAX_TERMS):
        raise ValueError(f"terms must be between 1 and {min(atom_count, MAX_TERMS)} (the pool has {atom_count} "
                         f"texts), not {terms}")
    targets = targets.to(device=dictionary.device, dtype=dictionary.dtype)
    chunk = _chunk_size(atom_count, dictionary.element_size(), memory)
    parts = [_omp_chunk(dictionary, targets[start:start + chunk], terms) for start in range(0, len(targets), chunk)]
    if not parts:
        empty = torch.zeros(0, terms)
        return SparseCodes(empty.long(), empty.to(dictionary.dtype), torch.zeros(0, dtype=torch.long),
                           torch.zeros(0, dtype=dictionary.dtype))
    return SparseCodes(*(torch.cat([getattr(p, name) for p in parts]) for name in ("atoms", "coefficients", "counts",
                                                                                    "scores")))


def _omp_chunk(dictionary: torch.Tensor, targets: torch.Tensor, terms: int) -> SparseCodes:
    b, d = targets.shape
    original = targets
    dtype, device = dictionary.dtype, dictionary.device
    tiny = torch.finfo(dtype).tiny
    atoms_out = torch.full((b, terms), -1, dtype=torch.long)
    coef_out = torch.zeros(b, terms, dtype=dtype)
    counts_out = torch.zeros(b, dtype=torch.long)

    rows = torch.arange(b, device=device)  # which target each live row is
    first = targets @ dictionary.T  # [b, M]: ⟨a, y⟩, also the right-hand sides of the normal equations
    correlations = first
    support = torch.zeros(b, terms, dtype=torch.long, device=device)
    chosen = torch.zeros(b, terms, d, dtype=dtype, device=device)  # the chosen atoms, in order
    gram = torch.zeros(b, terms, terms, dtype=dtype, device=device)
    gamma = torch.zeros(b, 0, dtype=dtype, device=device)

    def finish(mask: torch.Tensor, k: int) -> None:
        """Record the rows in `mask` with their first k terms; they leave the batch."""
        where = rows[mask].cpu()
        atoms_out[where, :k] = support[mask, :k].cpu()
        coef_out[where, :k] = gamma[mask].cpu()
        counts_out[where] = k

    for k in range(terms):
        magnitude = correlations.abs()
        best = magnitude.argmax(dim=1)
        peak = magnitude.gather(1, best.unsqueeze(1)).squeeze(1)
        stop = (peak * peak < tiny) | (support[:, :k] == best.unsqueeze(1)).any(dim=1)
        atom = dictionary[best]  # [live, d]
        cross = torch.einsum("bkd,bd->bk", chosen[:, :k], atom)
        gram[:, k, :k] = cross
        gram[:, :k, k] = cross
        gram[:, k, k] = (atom * atom).sum(dim=1)
        factor, info = torch.linalg.cholesky_ex(gram[:, :k + 1, :k + 1])
        stop |= info != 0  # the new atom depends linearly on the chosen ones
        if bool(stop.any()):
            finish(stop, k)
            keep = ~stop
            rows, first, support, chosen, gram = rows[keep], first[keep], support[keep], chosen[keep], gram[keep]
            targets, best, atom, factor = targets[keep], best[keep], atom[keep], factor[keep]
            if len(rows) == 0:
                break
        support[:, k] = best
        chosen[:, k] = atom
        rhs = first.gather(1, support[:, :k + 1]).unsqueeze(2)
        gamma = torch.cholesky_solve(rhs, factor).squeeze(2)  # [live, k+1]
        if k + 1 < terms:
            residual = targets - torch.einsum("bk,bkd->bd", gamma, chosen[:, :k + 1])
            correlations = residual @ dictionary.T
    else:
        finish(torch.ones(len(rows), dtype=torch.bool, device=device), terms)

    codes = SparseCodes(atoms_out, coef_out, counts_out, torch.zeros(b, dtype=dtype))
    scores = cosine(original, reconstruct(dictionary, codes)).cpu()
    return SparseCodes(atoms_out, coef_out, counts_out, scores)


def reconstruct(dictionary: torch.Tensor, codes: SparseCodes) -> torch.Tensor:
    """[B, d] reconstructions Σ_j coefficient_j · atom_j."""
    atoms = codes.atoms.clamp(min=0).to(dictionary.device)
    weights = codes.coefficients.to(device=dictionary.device, dtype=dictionary.dtype)
    return torch.einsum("bk,bkd->bd", weights, dictionary[atoms])


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity, 0 where either row is zero."""
    norms = a.norm(dim=1) * b.norm(dim=1)
    dots = (a * b).sum(dim=1)
    return torch.where(norms > 0, dots / torch.where(norms > 0, norms, torch.ones_like(norms)), torch.zeros_like(dots))
