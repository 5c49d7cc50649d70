"""Batched OMP (precompute/omp.py) against scikit-learn's orthogonal_mp on the same dictionary.

Target: >= 5x scikit-learn on CPU for 3,072 neurons, m = 32, a 30,000-text pool of
dimension 512, with the same atoms. The dictionary is a pool of random embeddings (the
default) centred and unit-normalised by `text_dictionary`; the targets are sparse sums of 8
atoms plus noise, like a neuron direction that a few words explain. scikit-learn walks the
neurons one at a time, so on a shared CPU it runs on a sample of `--sklearn-neurons` of them
(all of them with `--sklearn-neurons 3072`) and its time is scaled to the whole layer; the
atoms are compared on that sample. Both run in float32 on the same threads.

    python benchmarks/omp.py [--neurons 3072 --terms 32 --pool 30000 --dim 512 --sklearn-neurons 192]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import machine  # noqa: E402
from precompute.omp import omp, text_dictionary  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=3072)
    parser.add_argument("--terms", type=int, default=32)
    parser.add_argument("--pool", type=int, default=30_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--sklearn-neurons", type=int, default=192)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from sklearn.linear_model import orthogonal_mp

    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(args.pool, args.dim, generator=generator)
    dictionary = text_dictionary(embeddings)
    picks = torch.randint(0, args.pool, (args.neurons, 8), generator=generator)
    weights = torch.randn(args.neurons, 8, generator=generator)
    targets = torch.einsum("bk,bkd->bd", weights, dictionary[picks]) + 0.2 * torch.randn(args.neurons, args.dim,
                                                                                        generator=generator)

    on_device = dictionary.to(args.device)
    omp(on_device, targets[:64], args.terms)  # warm-up
    start = time.perf_counter()
    codes = omp(on_device, targets, args.terms)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    ours = time.perf_counter() - start

    sample = min(args.sklearn_neurons, args.neurons)
    x = np.asfortranarray(dictionary.numpy().T)  # [d, M], float32
    y = np.ascontiguousarray(targets[:sample].numpy().T)
    start = time.perf_counter()
    reference = orthogonal_mp(x, y, n_nonzero_coefs=args.terms).T  # [sample, M]
    theirs_sample = time.perf_counter() - start
    theirs = theirs_sample * args.neurons / sample

    dense = codes.dense(args.pool)[:sample].numpy()
    same = [set(np.flatnonzero(reference[b])) == set(np.flatnonzero(dense[b])) for b in range(sample)]
    agree = [b for b in range(sample) if same[b]]
    coefficient_error = float(np.abs(dense[agree] - reference[agree]).max()) if agree else None
    print(json.dumps({
        "benchmark": "omp",
        "machine": machine(),
        "neurons": args.neurons, "terms": args.terms, "pool": args.pool, "dim": args.dim,
        "ours_s": round(ours, 2), "ours_neurons_per_s": round(args.neurons / ours, 1),
        "sklearn_sample": sample, "sklearn_sample_s": round(theirs_sample, 2),
        "sklearn_projected_s": round(theirs, 1), "speedup": round(theirs / ours, 2),
        "same_atoms_fraction": round(float(np.mean(same)), 4),
        "max_coefficient_error": coefficient_error,
        "median_reconstruction_score": round(float(codes.scores.median()), 4),
        "target_speedup": 5,
    }))


if __name__ == "__main__":
    main()
