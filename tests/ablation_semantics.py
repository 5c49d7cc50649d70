"""The ablation bar on the shipped toy models, measured every faithful way we know.

The bar: ablating the colour units of one colour (figures.json's `multimodal_units`: one unit per
colour, in the layer figures.json names) lowers zero-shot accuracy on objects of that colour more
than on any other colour. Varied here:

- the silenced units of a colour: figures.json's one unit (`listed`), or every unit of the layer
  that passes figures.json's image test for the colour, >= 80 % of its top 50 held-out object
  pictures in that colour (`pure`; precompute.toy.evaluate.multimodal_units), of which
  figures.json lists the best reader of the colour's name;
- the silenced value: zero, or the unit's dataset mean (precompute.discovery.unit_means over 320
  world pictures);
- the zero-shot task: the eight colour names (`world-colors`), or the 48 full "a {colour}
  {shape}" classes (`world`), scored as the exact class or as the predicted class's colour;
- the pictures: one object of one colour (tests.discovery_world.held_out_objects), or the toy
  evaluation's pictures of one to four objects on varied backgrounds (tests.text_semantics).

For each colour, its unit is silenced and the per-colour accuracies are read again; the colour
"hurts most" when its own drop is larger than every other colour's. Also printed: the largest
drop of any colour's accuracy, so a bar met trivially (nothing drops) is told apart, and the
accuracies with the whole layer silenced: how much the prediction depends on the layer at all.

Measured (240 pictures of each kind): zero-shot colour accuracy is 100 % on both models and no
faithful variant moves it. figures.json's one unit, to zero or to its mean, changes no prediction
of any task on either model. The pure units (toy-vit 13-30 per colour, toy-rn 9-30) change none on
toy-vit and, on toy-rn, only green's own (-3 % of one-object pictures, -8 % of the evaluation's, to
zero): 1 of 8 colours hurt most. Silencing toy-vit's whole last MLP layer leaves colour accuracy
at 100 % (the residual stream carries colour past it); silencing toy-rn's whole layer4 drops it to
chance (12.5 %), so the layer matters but no colour's units alone do.

    python -m tests.ablation_semantics [--model toy-vit] [--pictures 240]   # prints JSON lines
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import torch

from precompute.discovery import Ablation, read, unit_means, zero_shot
from tests.discovery_world import held_out_objects, model, world_pixels
from tests.text_semantics import figures

MODELS = ("toy-vit", "toy-rn")


def pictures(kind: str, count: int) -> tuple[list, list[str], list[str]]:
    if kind == "one-object":
        samples = held_out_objects(count, seed=55)
        return [s.image for s in samples], [s.meta["color"] for s in samples], [s.meta["shape"] for s in samples]
    from precompute.world import COLORS, SHAPES, object_image

    colors, shapes = list(COLORS), list(SHAPES)
    rng = np.random.default_rng([1, 3])
    images, image_colours, image_shapes = [], [], []
    for _ in range(count):
        colour, shape = colors[int(rng.integers(len(colors)))], shapes[int(rng.integers(len(shapes)))]
        images.append(object_image(shape, colour, int(rng.integers(1, 5)), rng).image)
        image_colours.append(colour)
        image_shapes.append(shape)
    return images, image_colours, image_shapes


def pure_units(loaded) -> dict[str, tuple[int, ...]]:
    """Per colour, the last-layer units with >= 80 % of their top 50 object pictures in it."""
    from precompute.toy.evaluate import EvalConfig, final_layer_maxima
    from tests.text_semantics import _object_pictures

    config = EvalConfig()
    images, image_colours = _object_pictures(config.seed, config.multimodal_images)
    top = final_layer_maxima(loaded, images).topk(config.top_images, dim=0).indices.t()  # [units, top]
    colour_of = np.array(image_colours)[top.numpy()]
    return {c: tuple(int(u) for u in np.nonzero((colour_of == c).mean(1) >= config.purity)[0]) for c in set(image_colours)}


def measure(arch: str, count: int) -> list[dict]:
    from precompute.world import COLORS, SHAPES
    from precompute.zeroshot import class_features, label_set

    loaded = model(arch)
    entry = figures()[arch]
    layer = entry["layer"]
    means = unit_means(loaded, world_pixels(loaded), layer)
    colours = list(COLORS)
    tasks = {"world-colors": label_set("world-colors"), "world": label_set("world")}
    features = {name: class_features(loaded, labels).float() for name, labels in tasks.items()}
    silenced = {"listed": {c: (int(e["unit"]),) for c, e in entry["multimodal_units"].items()},
                "pure": pure_units(loaded)}
    rows = []
    for kind in ("one-object", "eval"):
        images, image_colours, image_shapes = pictures(kind, count)
        pixels = torch.stack([loaded.preprocess(image) for image in images])
        colour_index = torch.tensor([colours.index(c) for c in image_colours])
        class_index = torch.tensor([colours.index(c) * len(SHAPES) + SHAPES.index(s)
                                    for c, s in zip(image_colours, image_shapes)])

        def accuracies(ablations=()) -> dict[str, dict[str, float]]:
            embeddings = torch.cat([read(loaded, pixels[i:i + 128], ablations=ablations).embeddings
                                    for i in range(0, len(pixels), 128)])
            out = {}
            predicted = zero_shot(loaded, embeddings, features["world-colors"]).argmax(1)
            right = {"world-colors": predicted == colour_index}
            predicted = zero_shot(loaded, embeddings, features["world"]).argmax(1)
            right["world exact"] = predicted == class_index
            right["world colour"] = predicted // len(SHAPES) == colour_index
            for task, hits in right.items():
                out[task] = {c: float(hits[colour_index == i].float().mean()) for i, c in enumerate(colours)}
            return out

        base = accuracies()
        every = tuple(range(len(means)))
        for mode in ("zero", "mean"):  # the ceiling: the whole layer silenced
            whole = accuracies([Ablation(layer, every, mode, tuple(float(m) for m in means) if mode == "mean" else None)])
            rows.append({"model": arch, "pictures": kind, "count": count, "units": "whole layer", "mode": mode,
                         **{f"{task} accuracy": round(float(np.mean(list(whole[task].values()))), 4) for task in whole},
                         **{f"{task} baseline": round(float(np.mean(list(base[task].values()))), 4) for task in base}})
        for units_kind, mode in itertools.product(("listed", "pure"), ("zero", "mean")):
            ablated = {}
            for colour in colours:
                units = silenced[units_kind][colour]
                values = tuple(float(means[u]) for u in units) if mode == "mean" else None
                ablated[colour] = accuracies([Ablation(layer, units, mode, values)])
            for task in base:
                hurt, largest, detail = 0, 0.0, {}
                for colour in colours:
                    drops = {c: base[task][c] - ablated[colour][task][c] for c in colours}
                    own = drops.pop(colour)
                    hurt += own > max(drops.values())
                    largest = max(largest, own, *drops.values())
                    detail[colour] = round(own, 4)
                rows.append({"model": arch, "pictures": kind, "count": count, "units": units_kind,
                             "unit_counts": {c: len(silenced[units_kind][c]) for c in colours}, "mode": mode, "task": task,
                             "baseline_accuracy": round(float(np.mean(list(base[task].values()))), 4),
                             "colours_hurt_most": hurt, "largest_drop": round(largest, 4), "own_drops": detail})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append")
    parser.add_argument("--pictures", type=int, default=240)
    args = parser.parse_args()
    for arch in args.model or MODELS:
        for row in measure(arch, args.pictures):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
