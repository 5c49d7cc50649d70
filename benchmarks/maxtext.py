"""Maximal text for a whole layer: every neuron's climb batched through the text tower
(`precompute.discovery.maximal_texts`) against one neuron at a time (`maximal_text`), in
the same run, on the same directions.

The directions are a toy model's real ones: its layer's effects on `--images` world pictures,
each neuron's first principal component of its `--top` largest (precompute.directions, as the
directions job computes them). The batched climb runs on the whole layer; one neuron at a time
runs on its first `--baseline-units` neurons and its time is scaled to the layer (both are
reported, with the share of those neurons whose texts agree). Wall and CPU seconds are both
given: on a shared machine the CPU seconds say what the work costs.

    python benchmarks/maxtext.py [--model toy-vit --layer transformer.resblocks.5.mlp --baseline-units 32]
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


def layer_directions(loaded, layer: str, images: int, top: int, batch: int = 64) -> np.ndarray:
    from precompute.directions import MeanEffects, TopEffects, directions
    from precompute.lens import layer_effects
    from precompute.world import generate

    pixels = torch.stack([loaded.preprocess(generate(7, i).image) for i in range(images)])
    batches = [pixels[i:i + batch] for i in range(0, len(pixels), batch)]
    mean = None
    for part in batches:
        values = layer_effects(loaded, part, [layer])[layer].values
        mean = mean or MeanEffects(*values.shape[1:])
        mean.update(values)
    tops = TopEffects(mean.mean(), top)
    position = 0
    for part in batches:
        tops.update(layer_effects(loaded, part, [layer])[layer].values, np.arange(position, position + len(part)))
        position += len(part)
    r, _ = directions(tops)
    return r[np.linalg.norm(r, axis=1) > 0]


def timed(run):
    wall, cpu = time.perf_counter(), time.process_time()
    out = run()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-vit", choices=("toy-vit", "toy-rn"))
    parser.add_argument("--layer", default=None, help="default: the model's final layer")
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--top", type=int, default=16)
    parser.add_argument("--baseline-units", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    from precompute.discovery import MAXIMAL_TEXT_DEFAULTS, maximal_text, maximal_texts
    from precompute.registry import load_embedded

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_embedded(args.model)
    layer = args.layer or loaded.spec.final_layer.name
    directions = layer_directions(loaded, layer, args.images, args.top)
    maximal_texts(loaded, directions[:2])  # warm-up

    sample = min(args.baseline_units, len(directions))
    alone, alone_wall, alone_cpu = timed(lambda: [maximal_text(loaded, d) for d in directions[:sample]])
    batched, batched_wall, batched_cpu = timed(lambda: maximal_texts(loaded, directions))
    per_unit_alone = alone_wall / sample
    per_unit_batched = batched_wall / len(directions)
    agree = [a.tokens == b.tokens for a, b in zip(alone, batched)]
    steps = [r.steps for r in batched]
    print(json.dumps({
        "benchmark": "maxtext",
        "machine": machine(),
        "model": args.model, "layer": layer, "units": len(directions), **MAXIMAL_TEXT_DEFAULTS,
        "batched_s": round(batched_wall, 2), "batched_cpu_s": round(batched_cpu, 2),
        "batched_units_per_s": round(len(directions) / batched_wall, 2),
        "one_at_a_time_sample": sample, "one_at_a_time_sample_s": round(alone_wall, 2),
        "one_at_a_time_sample_cpu_s": round(alone_cpu, 2),
        "one_at_a_time_units_per_s": round(sample / alone_wall, 2),
        "one_at_a_time_projected_layer_s": round(per_unit_alone * len(directions), 1),
        "speedup": round(per_unit_alone / per_unit_batched, 2),
        "speedup_cpu": round((alone_cpu / sample) / (batched_cpu / len(directions)), 2),
        "same_texts_fraction": round(float(np.mean(agree)), 4),
        "median_steps": float(np.median(steps)),
        "mean_score": round(float(np.mean([r.score for r in batched])), 4),
        "mean_gain_over_best_word": round(float(np.mean([r.score - r.start_score for r in batched])), 4),
    }))


if __name__ == "__main__":
    main()
