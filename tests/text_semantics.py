"""The text side's semantic bars on the shipped toy models, measured end to end:

1. world-pool decompositions (32 terms) of the colour units that meet the bar in figures.json
   name their colour among their top 5 terms (bar: >= 5 of each model's 6 such units);
2. for each colour name as a prompt, the unit the prompt search (`/api/v1/search/prompt`, the
   last layer) ranks first has >= 80 % of its top 50 images in that colour (bar: >= 6 of 8
   colours per model). "Its top 50 images" are read two ways, both reported: on the held-out
   object pictures figures.json's colour units were found with (`object_purity`, the bar),
   and on the directions' own dataset, by the generator's colour of each picture's object
   (`dataset_purity`; word pictures have none, so they count against). Both of the search's
   readings of a prompt are measured: as a class name (the default) and as typed. `oracle` is
   what any ranking could reach: per colour, the purest unit and how many units pass 80 %.

The store is built as a user builds it: register the model and the world dataset, run the
directions job on the last layer, add the world pool, run the decompose job.

    python -m tests.text_semantics [--images 2000]   # prints the measurements as JSON
"""

from __future__ import annotations

import argparse
import json
from functools import cache
from pathlib import Path

import numpy as np
import torch

from precompute.toy import CHECKPOINT_DIR

MODELS = ("toy-rn", "toy-vit")
COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown")
TOP_TERMS, TOP_IMAGES, PURITY = 5, 50, 0.8


def figures() -> dict:
    return json.loads((CHECKPOINT_DIR / "figures.json").read_text())


@cache
def _object_pictures(seed: int = 1, count: int = 2400) -> tuple[list, list[str]]:
    """The held-out object pictures of `microscope toy eval` (precompute.toy.evaluate)."""
    from precompute.world import COLORS, SHAPES, object_image

    colors, shapes = list(COLORS), list(SHAPES)
    rng = np.random.default_rng([seed, 3])
    images, image_colors = [], []
    for _ in range(count):
        color = colors[int(rng.integers(len(colors)))]
        shape = shapes[int(rng.integers(len(shapes)))]
        images.append(object_image(shape, color, int(rng.integers(1, 5)), rng).image)
        image_colors.append(color)
    return images, image_colors


def _purity(values: torch.Tensor, colours: list[str | None], unit: int, colour: str) -> float:
    top = values[:, unit].topk(TOP_IMAGES).indices.tolist()
    return float(np.mean([colours[i] == colour for i in top]))


def build_store(url: str, folder: Path, model: str, images: int, loaded) -> str:
    """Register, directions on the last layer, world pool, decompositions; the layer's name."""
    from store import migrations
    from store.blobs import BlobStore
    from store.loading import register
    from store.session import make_engine, make_sessionmaker
    from workers.datasets import DatasetSource, register_dataset
    from workers.decompose_job import decompose_layers
    from workers.directions_job import DirectionsRequest, run_directions
    from workers.engines import StoreConfig

    migrations.upgrade(url)
    store = StoreConfig(url, str(folder / "blobs"))
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            register(session, loaded)
            session.commit()
        register_dataset(make_sessionmaker(engine), BlobStore(store.blob_url), "world",
                         DatasetSource("synthetic", "", count=images, seed=0))
    finally:
        engine.dispose()
    layer = loaded.spec.final_layer.name
    run_directions(store, DirectionsRequest(model_id=model, dataset_id="world", layers=(layer,)), show_progress=False,
                   loaded=loaded)
    for _ in decompose_layers(store, {model: [layer]}, loaded={model: loaded}, show_progress=False):
        pass
    return layer


def measure(model: str, folder: Path, images: int = 2000, readings: tuple[str, ...] = ("class", "text")) -> dict:
    from fastapi.testclient import TestClient

    from app.server import create_app
    from app.settings import Settings
    from precompute.registry import load_embedded
    from precompute.toy.evaluate import final_layer_maxima
    from store.models import Decomposition, Layer, Unit
    from store.session import make_engine, make_sessionmaker
    from sqlalchemy import select

    loaded = load_embedded(model)
    url = f"sqlite:///{folder / 'semantics.db'}"
    if (folder / "semantics.db").exists():  # a store built before: (re)decompose only
        from workers.decompose_job import decompose_layers
        from workers.engines import StoreConfig

        layer = loaded.spec.final_layer.name
        for _ in decompose_layers(StoreConfig(url, str(folder / "blobs")), {model: [layer]}, loaded={model: loaded},
                                  show_progress=False):
            pass
    else:
        layer = build_store(url, folder, model, images, loaded)

    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        rows = session.execute(
            select(Unit.index, Decomposition.rank, Decomposition.text)
            .join(Decomposition, Decomposition.unit_id == Unit.id).join(Layer, Layer.id == Unit.layer_id)
            .where(Layer.name == layer, Decomposition.pool_id == "world").order_by(Unit.index, Decomposition.rank)
        ).all()
    engine.dispose()
    terms: dict[int, list[str]] = {}
    for index, _, text in rows:
        terms.setdefault(index, []).append(text)

    units = {}
    for colour, entry in figures()[model]["multimodal_units"].items():
        top = terms.get(entry["unit"], [])[:TOP_TERMS]
        units[colour] = {"unit": entry["unit"], "meets_bar": entry["meets_bar"], "top_terms": top,
                         "names_colour": colour in top}
    named = sum(u["names_colour"] for u in units.values() if u["meets_bar"])

    objects, object_colours = _object_pictures()
    object_values = final_layer_maxima(loaded, objects)
    from precompute.world import generate

    dataset = [generate(0, i) for i in range(images)]
    dataset_values = final_layer_maxima(loaded, [s.image for s in dataset])
    dataset_colours = [s.meta.get("color") if s.meta.get("kind") != "word" else None for s in dataset]

    settings = Settings(database_url=url, data_dir=folder / "data", blob_url=str(folder / "blobs"), device="cpu",
                        live_rate_limit="1000/minute")
    prompts: dict[str, dict] = {reading: {} for reading in readings}
    with TestClient(create_app(settings)) as client:
        for reading in readings:
            for colour in COLOURS:
                body = client.get("/api/v1/search/prompt", params={"text": colour, "model": model, "layer": layer, "k": 8,
                                                                    "reading": reading}).json()
                first = body["results"][0]["index"] if body.get("results") else None
                prompts[reading][colour] = {
                    "first_unit": first,
                    "coefficient": body["results"][0]["coefficient"] if first is not None else None,
                    "object_purity": None if first is None else round(_purity(object_values, object_colours, first, colour), 3),
                    "dataset_purity": None if first is None else round(_purity(dataset_values, dataset_colours, first, colour), 3),
                    "figures_unit": figures()[model]["multimodal_units"][colour]["unit"],
                }
    pure = {reading: sum(p["object_purity"] is not None and p["object_purity"] >= PURITY for p in found.values())
            for reading, found in prompts.items()}
    pure_dataset = {reading: sum(p["dataset_purity"] is not None and p["dataset_purity"] >= PURITY for p in found.values())
                    for reading, found in prompts.items()}
    return {"model": model, "layer": layer, "images": images, "units_meeting_bar": sum(u["meets_bar"] for u in units.values()),
            "units_naming_colour": named, "colour_units": units, "prompts": prompts,
            "prompts_pure_objects": pure, "prompts_pure_dataset": pure_dataset, "oracle": oracle(object_values, object_colours)}


def oracle(values: torch.Tensor, colours: list[str]) -> dict:
    """What any ranking could reach: per colour, the purest unit's purity and how many units
    have >= 80 % of their top 50 object pictures in that colour."""
    top = values.topk(TOP_IMAGES, dim=0).indices  # [TOP_IMAGES, units]
    index = torch.tensor([COLOURS.index(c) for c in colours])
    purity = torch.stack([(index[top] == k).float().mean(0) for k in range(len(COLOURS))])  # [colours, units]
    return {c: {"best": round(float(purity[k].max()), 3), "units_pure": int((purity[k] >= PURITY).sum())}
            for k, c in enumerate(COLOURS)}


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--model", action="append")
    parser.add_argument("--folder", type=Path, help="Keep (or reuse) the store here instead of a temporary folder.")
    args = parser.parse_args()
    for model in args.model or MODELS:
        if args.folder:
            (args.folder / model).mkdir(parents=True, exist_ok=True)
            print(json.dumps(measure(model, args.folder / model, args.images)), flush=True)
            continue
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(measure(model, Path(folder), args.images)), flush=True)


if __name__ == "__main__":
    main()
