"""Which unit a colour name should find: the ways of ranking a layer's units for a prompt,
measured against the prompt bar of tests/text_semantics.py (the first unit's top 50 held-out
object pictures >= 80 % in the colour, for >= 6 of 8 colours), on a store that
`python -m tests.text_semantics --folder DIR` built (its directions over 2,000 world pictures).

The prompt's embedding e is read three ways: as typed (`typed`), as the mean of the toy prompts
"a photo of a {}", "a {}", "a picture of a {}" (`templated`), or as the zero-shot classifier
reads a class name (`class`: for a world colour, the world's prompt ensemble over every shape),
each used as it is or centred on the world pool's mean (`-centred`). A unit is ranked by

- `omp-coefficient`: its coefficient in the k-term sparse code of e over the unit-length
  directions, adds first, largest first;
- `omp-pursuit`: the same code, adds first, in the order the pursuit picks them (the first pick:
  the largest |<r_n, e>|), what /search/prompt lists;
- `cosine`: <r_n, e>, the article's alignment (segmentation, spurious cues);
- `threshold-weighted`: s_n <r_n, e>, with s_n the unit's significance threshold (what its effect
  adds to the prompt's logit when it is significant);
- `mean-plus-direction`: <b_n + s_n r_n, e>, its effect on such an image including the mean.

For each: how many colours' first unit passes (`pure`), and the share of the first 5 units that
pass (`pure_at_5`). `oracle`: per colour, how many units pass at all.

Measured (k = 8; toy-rn / toy-vit): typed-centred, the search's reading before: omp 1 / 6, cosine
2 / 6, threshold-weighted 4 / 4, mean-plus-direction 5 / 3; class, uncentred: omp (either order)
7 / 8, cosine 7 / 8 (pure_at_5 0.75 / 0.88), threshold-weighted 5 / 6; class-centred: 3 / 6 (omp),
4 / 7 (cosine). With more terms the coefficient order drifts (class, toy-rn: 7 at k <= 8, 4 at
k = 24, 1 at k = 64); the pursuit order stays at 7 / 8 for every k. Every colour has 9-30 units
that pass on either model: the model meets the bar, the ranking decides.

    python -m tests.prompt_semantics --folder DIR [--model toy-rn] [--terms 8]   # JSON lines
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from tests.text_semantics import COLOURS, PURITY, TOP_IMAGES, _object_pictures

TEMPLATES = ("a photo of a {}", "a {}", "a picture of a {}")


def _directions(folder: Path, model: str):
    from store.blobs import BlobStore
    from store.directions import load_layer_directions
    from store.repository import get_layer
    from store.session import make_engine, make_sessionmaker

    from precompute.registry import load_embedded

    layer = load_embedded(model).spec.final_layer.name
    engine = make_engine(f"sqlite:///{folder / 'semantics.db'}")
    try:
        with make_sessionmaker(engine)() as session:
            return load_layer_directions(session, BlobStore(str(folder / "blobs")), get_layer(session, model, layer).id)
    finally:
        engine.dispose()


def _readings(loaded) -> dict[str, np.ndarray]:
    from precompute.discovery import class_embedding
    from precompute.text_pools import encode_texts
    from precompute.words import world_vocabulary

    def encode(texts: list[str]) -> np.ndarray:
        return encode_texts(loaded.model, loaded.tokenizer, texts).numpy()

    def templated(words: list[str]) -> np.ndarray:
        v = encode([t.format(w) for w in words for t in TEMPLATES]).reshape(len(words), len(TEMPLATES), -1).mean(1)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    pool_mean = encode(list(world_vocabulary())).mean(0)
    out = {"typed": encode(list(COLOURS)), "templated": templated(list(COLOURS)),
           "class": np.stack([class_embedding(loaded, c).numpy() for c in COLOURS])}
    out.update({f"{name}-centred": vectors - pool_mean for name, vectors in list(out.items())})
    return out


def _omp_orders(directions: np.ndarray, targets: np.ndarray, terms: int) -> tuple[list[list[int]], list[list[int]]]:
    from precompute.omp import omp

    keep = np.flatnonzero(np.linalg.norm(directions, axis=1) > 0)
    codes = omp(torch.from_numpy(directions[keep]), torch.from_numpy(targets.astype(np.float32)), terms)
    by_coefficient, by_pursuit = [], []
    for b in range(len(targets)):
        n = int(codes.counts[b])
        pairs = [(int(keep[a]), c) for a, c in zip(codes.atoms[b, :n].tolist(), codes.coefficients[b, :n].tolist())]
        by_coefficient.append([u for u, _ in sorted(pairs, key=lambda p: (p[1] <= 0, -abs(p[1])))])
        by_pursuit.append([u for u, c in pairs if c > 0] + [u for u, c in pairs if c <= 0])
    return by_coefficient, by_pursuit


def measure(model: str, folder: Path, terms: int = 8) -> list[dict]:
    from precompute.registry import load_embedded
    from precompute.toy.evaluate import final_layer_maxima

    loaded = load_embedded(model)
    stored = _directions(folder, model)
    r, b, s = stored.directions, stored.mean_effects, stored.thresholds
    objects, colours = _object_pictures()
    top = final_layer_maxima(loaded, objects).topk(TOP_IMAGES, dim=0).indices  # [TOP_IMAGES, units]
    index = torch.tensor([COLOURS.index(c) for c in colours])
    purity = torch.stack([(index[top] == k).float().mean(0) for k in range(len(COLOURS))]).numpy()  # [colours, units]
    units = stored.units
    rows = []
    for reading, targets in _readings(loaded).items():
        unit_targets = targets / np.linalg.norm(targets, axis=1, keepdims=True)
        scores = {"cosine": unit_targets @ r.T, "threshold-weighted": (unit_targets @ r.T) * s,
                  "mean-plus-direction": unit_targets @ (b + s[:, None] * r).T}
        orders = {name: [list(np.argsort(-row, kind="stable")) for row in value] for name, value in scores.items()}
        orders["omp-coefficient"], orders["omp-pursuit"] = _omp_orders(r, targets, terms)
        for ranking, per_colour in orders.items():
            first = [int(order[0]) for order in per_colour]
            rows.append({
                "model": model, "reading": reading, "ranking": ranking, "terms": terms,
                "pure": int(sum(purity[k, u] >= PURITY for k, u in enumerate(first))),
                "pure_at_5": round(float(np.mean([(purity[k, order[:5]] >= PURITY).mean()
                                                  for k, order in enumerate(per_colour)])), 3),
                "first_units": {c: int(units[u]) for c, u in zip(COLOURS, first)},
                "first_purity": {c: round(float(purity[k, u]), 2) for k, (c, u) in enumerate(zip(COLOURS, first))},
            })
    rows.append({"model": model, "oracle": {c: int((purity[k] >= PURITY).sum()) for k, c in enumerate(COLOURS)}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", type=Path, required=True, help="The folder `tests.text_semantics --folder` filled.")
    parser.add_argument("--model", action="append")
    parser.add_argument("--terms", type=int, default=8)
    args = parser.parse_args()
    for model in args.model or ("toy-rn", "toy-vit"):
        for row in measure(model, args.folder / model, args.terms):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
