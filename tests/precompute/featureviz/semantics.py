"""The Done bars of feature visualization, measured on the shipped toy models.

    python -m tests.precompute.featureviz.semantics [--steps 512] [--images 2000] [--models toy-rn,toy-vit]

prints one JSON object per model; `test_semantics.py` asserts the bars on a smaller run."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

FIGURES = Path(__file__).resolve().parents[3] / "precompute" / "toy" / "checkpoints" / "figures.json"
FIRST_PAGE = tuple(range(48))  # the layer grid's first page (48 per page, by index)
DIVERSITY = 4


def figure_units(model_id: str) -> dict[str, dict]:
    return json.loads(FIGURES.read_text())[model_id]["multimodal_units"]


def world_images(loaded, count: int, seed: int = 0) -> torch.Tensor:
    from precompute.world import generate

    return torch.stack([loaded.preprocess(generate(seed, i).image.convert("RGB")) for i in range(count)])


def measure(model_id: str, steps: int, images: int, units=FIRST_PAGE, batch_size: int | None = 64) -> dict:
    from precompute.featureviz.checks import (dataset_maxima, dominant_colour, mean_pairwise_gram_cosine,
                                              probe_scores)
    from precompute.featureviz.facets import train_probe, world_facet_images
    from precompute.featureviz.render import RenderItem, RenderSettings, lower_layer, render
    from precompute.registry import load_embedded
    from precompute.world import COLORS

    started = time.monotonic()
    loaded = load_embedded(model_id)
    layer = loaded.spec.final_layer.name
    lower = lower_layer(loaded.spec, layer)
    figures = figure_units(model_id)
    colour_units = {name: entry["unit"] for name, entry in figures.items()}
    rendered = tuple(dict.fromkeys([*units, *colour_units.values()]))
    settings = RenderSettings(steps=steps, batch_size=batch_size)
    # 1. channel visualizations against the dataset's maxima
    channel = render(loaded, layer, [RenderItem(u) for u in rendered], settings)
    finals = np.asarray([r.final_activation for r in channel])
    maxima = dataset_maxima(loaded, layer, world_images(loaded, images), rendered)
    out: dict = {"model": model_id, "layer": layer, "steps": steps, "dataset_images": images, "units": len(rendered),
                 "fraction_at_least_dataset_max_spatial": float((finals >= maxima["spatial"]).mean()),
                 "fraction_at_least_dataset_max_channel": float((finals >= maxima["channel"]).mean()),
                 "median_ratio_to_spatial_max": float(np.median(finals / np.maximum(maxima["spatial"], 1e-6)))}
    # 2. colour units' dominant colour
    by_unit = {r.item.unit: r for r in channel}
    colours = {name: dominant_colour(by_unit[u].image, COLORS) for name, u in colour_units.items()}
    bar = [name for name, entry in figures.items() if entry["meets_bar"]]
    out["colours"] = colours
    out["colour_units_meeting_bar"] = len(bar)
    out["colour_units_right"] = sum(colours[name] == name for name in bar)
    # 3. diversity against plain visualizations from different seeds
    figure_list = list(colour_units.values())
    diverse = render(loaded, layer, [RenderItem(u, "diversity", str(k)) for u in figure_list for k in range(DIVERSITY)], settings)
    seeded = [render(loaded, layer, [RenderItem(u) for u in figure_list], RenderSettings(steps=steps, batch_size=batch_size,
                                                                                        seed=s)) for s in range(1, DIVERSITY + 1)]
    div_cos, plain_cos = [], []
    for i, unit in enumerate(figure_list):
        div_cos.append(mean_pairwise_gram_cosine(loaded, lower, np.stack([r.image for r in diverse[i * DIVERSITY:(i + 1) * DIVERSITY]])))
        plain_cos.append(mean_pairwise_gram_cosine(loaded, lower, np.stack([run[i].image for run in seeded])))
    out["diversity_gram_cosine"] = float(np.mean(div_cos))
    out["plain_seeds_gram_cosine"] = float(np.mean(plain_cos))
    out["units_more_diverse"] = int(sum(d < p for d, p in zip(div_cos, plain_cos)))
    out["diversity_final_activation_mean"] = float(np.mean([r.final_activation for r in diverse]))
    # 4. the text facet against the plain visualization, on the text probe
    pos, neg = world_facet_images("text", 200, 0, loaded.spec.image_size)
    probe, fit = train_probe(loaded, lower, "text", pos, neg)
    facet = render(loaded, layer, [RenderItem(u, "facet", "text") for u in rendered], settings, probes={"text": probe})
    facet_scores = probe_scores(loaded, probe, np.stack([r.image for r in facet]))
    plain_scores = probe_scores(loaded, probe, np.stack([r.image for r in channel]))
    out["text_probe_held_out_accuracy"] = fit.held_out_accuracy
    out["fraction_text_facet_scores_higher"] = float((facet_scores > plain_scores).mean())
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--models", default="toy-rn,toy-vit")
    parser.add_argument("--units", type=int, default=48, help="first units of the layer (plus the figures' units)")
    args = parser.parse_args()
    for model_id in args.models.split(","):
        print(json.dumps(measure(model_id, args.steps, args.images, tuple(range(args.units)))), flush=True)


if __name__ == "__main__":
    main()
