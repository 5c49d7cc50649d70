"""A store populated with plausible results for the toy models, for the web tests, the browser
tests and the web benchmarks.

The models are registered the way `microscope models register` does it (the trained toy
checkpoints when they exist, random-initialised weights otherwise), so /probe runs the real
model. The precompute results (statistics, feature visualizations, dataset examples, bucket
samples, rastered words, word embeddings, decompositions, directions) are made up but shaped
exactly like what the jobs write, with real images: dataset pictures from the synthetic world,
feature visualizations drawn as coloured interference patterns, crops cut from the pictures.
Deterministic for a given seed.

    python -m tests.sample_store --database-url sqlite:///x.db --blob-url /tmp/blobs --units 768
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from store import annotations, repository
from store.blobs import BlobStore
from store.models import (
    Annotation,
    BucketSample,
    Collection,
    CollectionUnit,
    Dataset,
    DatasetExample,
    DatasetImage,
    Decomposition,
    FeatureViz,
    Layer,
    StoredImage,
    TextPool,
    Unit,
    WordActivation,
    WordEmbedding,
    WordList,
)
from store.session import make_engine, make_sessionmaker

TOY_MODELS = ("toy-rn", "toy-vit")
DATASET = "synthetic-world"
WORD_LIST = "toy-words"
TEXT_POOL = "toy-captions"
LABELS = {0: "red things and the word red", 3: "circles", 5: "written words", 7: "blue squares"}
FACETS = ("text", "colour")


@dataclass
class Populated:
    models: dict[str, dict[str, Any]]  # model id -> {"layer": final layer, "partial_layer": ..., "units": n}
    dataset: str
    images: int


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array.astype(np.float32), allow_pickle=False)
    return out.getvalue()


def pattern(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """A feature-visualization-like picture: two coloured interference patterns."""
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.zeros((size, size, 3))
    for _ in range(2):
        angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(2, 9), rng.uniform(0, 2 * np.pi)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)
        wave *= 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 3) * (x - y) + rng.uniform(0, 6))
        out += wave[..., None] * rng.uniform(0, 1, 3)
    out = out / max(out.max(), 1e-6)
    return (out * 255).astype(np.uint8)


def register_toy(session: Session, model_id: str) -> None:
    """Register a toy model as the CLI does: the trained checkpoint if shipped, else random."""
    from precompute.registry import load_embedded, load_model
    from precompute.toy import embedded_checkpoint
    from store.loading import register

    if embedded_checkpoint(model_id).is_file():
        loaded = load_embedded(model_id)
        description = f"embedded {model_id}, trained on the synthetic world"
    else:
        loaded = load_model(model_id, model_id)
        description = f"{model_id} with random weights (the trained checkpoint is not built yet)"
    register(session, loaded, description)


def _final_layers(session: Session, model_id: str) -> tuple[Layer, Layer]:
    layers = repository.list_layers(session, model_id)
    names = [l.name for l in layers]
    if "layer4" in names:
        final, partial = "layer4", "layer3"
    else:
        mlps = [n for n in names if n.endswith(".mlp")]
        final, partial = mlps[-1], mlps[-2]
    by_name = {l.name: l for l in layers}
    return by_name[final], by_name[partial]


def add_dataset(session: Session, blobs: BlobStore, count: int, seed: int = 0) -> list[StoredImage]:
    from precompute.world import generate

    if session.get(Dataset, DATASET) is None:
        session.add(Dataset(id=DATASET, source_uri=f"world:seed={seed}", kind="synthetic", image_count=count))
        session.flush()
    images = []
    for i in range(count):
        data = png(np.asarray(generate(seed, i).image))
        uri = blobs.put(data, ".png")
        sha = BlobStore.blob_name(uri).split(".")[0]
        row = session.query(StoredImage).filter_by(sha256=sha).one_or_none()
        if row is None:
            row = StoredImage(sha256=sha, blob_uri=uri, width=64, height=64)
            session.add(row)
            session.flush()
        if session.query(DatasetImage).filter_by(dataset_id=DATASET, position=i).one_or_none() is None:
            session.add(DatasetImage(dataset_id=DATASET, image_id=row.id, position=i))
        images.append(row)
    session.flush()
    return images


def _crop(blobs: BlobStore, image: StoredImage, cell: tuple[int, int], grid: tuple[int, int]) -> str:
    picture = Image.open(io.BytesIO(blobs.get(image.blob_uri))).convert("RGB")
    (r, c), (h, w) = cell, grid
    cw, ch = picture.width / w, picture.height / h
    box = (int(max(0, (c - 0.5) * cw)), int(max(0, (r - 0.5) * ch)), int(min(picture.width, (c + 1.5) * cw)),
           int(min(picture.height, (r + 1.5) * ch)))
    out = io.BytesIO()
    picture.crop(box).resize((48, 48), Image.Resampling.BICUBIC).save(out, format="PNG")
    return blobs.put(out.getvalue(), ".png")


ALL_KINDS = frozenset({"statistics", "labels", "directions", "featureviz", "examples", "buckets", "words", "decomposition",
                       "embedding", "maxtext"})
# What the precompute jobs do not write yet (the examples and words jobs cover the rest).
NOT_FROM_JOBS = frozenset({"labels", "directions", "featureviz", "decomposition"})


def populate_layer(
    session: Session, blobs: BlobStore, layer: Layer, images: list[StoredImage], units: int, rng: np.random.Generator,
    embed_dim: int, words: list[str], texts: list[str], kinds: frozenset[str] = ALL_KINDS,
) -> None:
    unit_rows = {
        u.index: u for u in session.query(Unit).filter(Unit.layer_id == layer.id, Unit.index < units).order_by(Unit.index)
    }
    grid = layer.spatial or (1, 1)
    kind = "channel" if layer.kind == "conv" else "neuron"
    directions: dict[int, np.ndarray] = {}
    for index, unit in unit_rows.items():
        scale = float(rng.uniform(2, 12))
        if "statistics" in kinds:
            samples = np.maximum(rng.gamma(0.6, scale / 6, size=4000) - rng.uniform(0, 1), 0) - rng.exponential(0.2, 4000)
            counts, edges = np.histogram(samples, bins=40)
            unit.mean, unit.std = float(samples.mean()), float(samples.std())
            unit.min, unit.max = float(samples.min()), float(samples.max())
            unit.fraction_active = float((samples > 0).mean())
            unit.histogram = {"edges": [round(float(e), 5) for e in edges], "counts": [int(c) for c in counts]}
        top_value = unit.max if unit.max is not None else scale
        low_value = unit.min if unit.min is not None else -1.0
        if "labels" in kinds and index in LABELS:
            unit.label = LABELS[index]
            session.add(Annotation(unit_id=unit.id, kind="label", text=LABELS[index], author="sample-data"))
        if "directions" in kinds:
            directions[index] = rng.normal(size=embed_dim)
        if "featureviz" in kinds:
            session.add(FeatureViz(unit_id=unit.id, kind=kind, variant="", blob_uri=blobs.put(png(pattern(rng)), ".png"),
                                   final_activation=round(top_value * 1.8, 4), parameters={"steps": 512, "lr": 0.05}))
            if index < 6:
                for k in range(4):
                    session.add(FeatureViz(unit_id=unit.id, kind="diversity", variant=str(k),
                                           blob_uri=blobs.put(png(pattern(rng, 96)), ".png"), final_activation=None, parameters={}))
                for facet in FACETS:
                    session.add(FeatureViz(unit_id=unit.id, kind="facet", variant=facet,
                                           blob_uri=blobs.put(png(pattern(rng, 96)), ".png"), final_activation=None, parameters={}))
        if "examples" in kinds:
            picks = rng.choice(len(images), size=12, replace=False)
            top = sorted((float(top_value * rng.uniform(0.7, 1.0)) for _ in range(8)), reverse=True)
            bottom = sorted(float(low_value * rng.uniform(0.7, 1.0)) for _ in range(4))
            for rank, (activation, pick) in enumerate(zip(top, picks[:8])):
                position = int(rng.integers(0, grid[0] * grid[1]))
                crop = _crop(blobs, images[pick], divmod(position, grid[1]), grid) if rank < 4 else None
                session.add(DatasetExample(unit_id=unit.id, dataset_id=DATASET, sign="top", rank=rank, image_id=images[pick].id,
                                           activation=round(activation, 5), position=position if layer.spatial else None,
                                           crop_uri=crop))
            for rank, (activation, pick) in enumerate(zip(bottom, picks[8:])):
                session.add(DatasetExample(unit_id=unit.id, dataset_id=DATASET, sign="bottom", rank=rank, image_id=images[pick].id,
                                           activation=round(activation, 5), position=None, crop_uri=None))
        if "buckets" in kinds:
            lows = np.linspace(low_value, top_value, 9)
            for bucket in range(8):
                for slot in range(3):
                    pick = int(rng.integers(0, len(images)))
                    session.add(BucketSample(unit_id=unit.id, dataset_id=DATASET, bucket=bucket, slot=slot, low=float(lows[bucket]),
                                             high=float(lows[bucket + 1]), image_id=images[pick].id,
                                             activation=float(rng.uniform(lows[bucket], lows[bucket + 1]))))
        if "words" in kinds:
            chosen = rng.choice(len(words), size=10, replace=False)
            for rank, (w, activation) in enumerate(zip(chosen, sorted(rng.uniform(0.5, 5.0, 10), reverse=True))):
                session.add(WordActivation(unit_id=unit.id, word_list_id=WORD_LIST, rank=rank, word=words[int(w)],
                                           activation=round(float(activation), 4)))
        if "decomposition" in kinds:
            terms = rng.choice(len(texts), size=5, replace=False)
            for rank, (t, coefficient) in enumerate(zip(terms, sorted(rng.normal(0, 0.3, 5), key=lambda v: -abs(v)))):
                session.add(Decomposition(unit_id=unit.id, pool_id=TEXT_POOL, rank=rank, text=texts[int(t)],
                                          coefficient=round(float(coefficient), 5)))
    if directions:
        store_directions(session, blobs, layer.id, directions)
    if "maxtext" in kinds and directions:
        _add_maximal_texts(session, [unit_rows[i].id for i in sorted(directions)], words)
    if "embedding" in kinds:
        matrix = rng.normal(size=(len(words), layer.units)).astype(np.float32)
        mean = matrix.mean(axis=0)
        session.add(WordEmbedding(layer_id=layer.id, word_list_id=WORD_LIST, vectors_uri=blobs.put(npy(matrix - mean), ".npy"),
                                  mean_uri=blobs.put(npy(mean), ".npy")))
    session.flush()


def _add_maximal_texts(session: Session, unit_ids: list[int], words: list[str]) -> None:
    """A made-up maximal text per unit with a direction (no random draws: the other results stay as they are)."""
    from store.maximal_texts import write_maximal_texts
    from store.models import Dataset

    dataset_id = session.query(Dataset.id).order_by(Dataset.id).first()[0]
    write_maximal_texts(session, dataset_id, [
        {"unit_id": uid, "text": f"{words[i % len(words)]} {words[(3 * i + 1) % len(words)]}", "tokens": [10 + i, 11 + i],
         "score": round(0.5 + 0.01 * i, 4), "start_text": words[i % len(words)], "start_score": round(0.4 + 0.01 * i, 4),
         "steps": 3, "parameters": {"length": 2, "steps": 20, "candidates": 16, "starts": 4}}
        for i, uid in enumerate(unit_ids)])


def store_directions(session: Session, blobs: BlobStore, layer_id: int, directions: dict[int, np.ndarray]) -> str:
    """One direction set for the layer ({unit index: vector}, made unit length), as the
    directions job writes it, over the store's first dataset (made up if there is none)."""
    from store.directions import LayerDirections, save_layer_directions
    from store.models import Dataset

    order = sorted(directions)
    vectors = np.stack([np.asarray(directions[i], dtype=np.float32) for i in order])
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms > 0, norms, 1)
    dataset_id = session.query(Dataset.id).order_by(Dataset.id).first()
    if dataset_id is None:
        session.add(Dataset(id=DATASET, source_uri="synthetic:0", kind="synthetic", image_count=0))
        session.flush()
        dataset_id = (DATASET,)
    return save_layer_directions(session, blobs, layer_id, LayerDirections(
        units=np.array(order, dtype=np.int64), directions=vectors, mean_effects=np.zeros_like(vectors),
        thresholds=np.ones(len(order), dtype=np.float32), paths="sample", dataset_id=dataset_id[0], image_count=0))


def _vocabulary() -> tuple[list[str], list[str]]:
    from precompute.world import COMMON_WORDS, WORDS

    words = sorted(set(WORDS) | set(COMMON_WORDS))[:300]
    texts = [f"a photo of {w}" for w in words[:120]] + [f"the word {w}" for w in words[:60]]
    return words, texts


def add_results(
    database_url: str, blob_url: str, model_id: str, layer_name: str, *, units: int, kinds: frozenset[str] = NOT_FROM_JOBS,
    seed: int = 0,
) -> None:
    """Add the `kinds` of results to the first `units` units of a layer of a registered model:
    for a store whose other results came from the real precompute jobs."""
    from precompute.architectures import architecture

    blobs = BlobStore(blob_url)
    engine = make_engine(database_url)
    words, texts = _vocabulary()
    try:
        with make_sessionmaker(engine)() as session:
            if "decomposition" in kinds and session.get(TextPool, TEXT_POOL) is None:
                session.add(TextPool(id=TEXT_POOL, source="toy captions", texts=texts))
            layer = session.query(Layer).filter(Layer.model_id == model_id, Layer.name == layer_name).one()
            arch = repository.get_model(session, model_id).arch
            populate_layer(session, blobs, layer, [], units, np.random.default_rng(seed), architecture(arch).embed_dim, words,
                           texts, kinds)
            session.commit()
    finally:
        engine.dispose()


def populate(
    database_url: str, blob_url: str, *, models: tuple[str, ...] = TOY_MODELS, units: int = 24, images: int = 48,
    seed: int = 0,
) -> Populated:
    """Fill a migrated, empty store. `units` per final layer get everything; as many units of
    the layer before get statistics only; every other layer stays empty (not computed)."""
    from precompute.architectures import architecture

    blobs = BlobStore(blob_url)
    engine = make_engine(database_url)
    rng = np.random.default_rng(seed)
    words, texts = _vocabulary()
    result: dict[str, dict[str, Any]] = {}
    try:
        with make_sessionmaker(engine)() as session:
            for model_id in models:
                register_toy(session, model_id)
            session.add(WordList(id=WORD_LIST, source="precompute.world vocabulary", words=words, font="DejaVuSans",
                                 font_size=20, image_size=64))
            session.add(TextPool(id=TEXT_POOL, source="toy captions", texts=texts))
            dataset_images = add_dataset(session, blobs, images, seed)
            for model_id in models:
                final, partial = _final_layers(session, model_id)
                n = min(units, final.units)
                embed_dim = architecture(model_id).embed_dim
                populate_layer(session, blobs, final, dataset_images, n, rng, embed_dim, words, texts)
                populate_layer(session, blobs, partial, dataset_images, min(units, partial.units), rng, embed_dim, words, texts,
                               frozenset({"statistics"}))
                result[model_id] = {"layer": final.name, "partial_layer": partial.name, "units": n, "layer_units": final.units}
                for kind, state, done in (("examples", "done", 1.0), ("featureviz", "running", 0.4), ("words", "pending", 0.0)):
                    job = repository.ensure_job(session, kind, model_id, layer=final.name, dataset_id=DATASET, total_items=images)
                    job.state, job.progress, job.done_items = state, done, int(done * images)
            first = models[0]
            layer = result[first]["layer"]
            collection = Collection(id="colour-units", title="Colour units", description="Units that respond to a colour.",
                                    author="sample-data")
            session.add(collection)
            session.flush()
            for position, index in enumerate((0, 7)):
                unit = session.query(Unit).join(Layer).filter(Layer.model_id == first, Layer.name == layer, Unit.index == index).one()
                session.add(CollectionUnit(collection_id=collection.id, unit_id=unit.id, position=position, note=""))
            session.commit()
    finally:
        engine.dispose()
    return Populated(result, DATASET, images)


def create_token(database_url: str, name: str = "tester") -> str:
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            _, token = annotations.create_token(session, name)
            session.commit()
    finally:
        engine.dispose()
    return token


def main() -> None:
    parser = argparse.ArgumentParser(description="Populate a migrated store with sample results for the toy models.")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--blob-url", required=True)
    parser.add_argument("--units", type=int, default=24)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--migrate", action="store_true", help="Run the migrations first.")
    args = parser.parse_args()
    if args.migrate:
        from store import migrations

        migrations.upgrade(args.database_url)
    populated = populate(args.database_url, args.blob_url, units=args.units, images=args.images)
    print(json.dumps({"models": populated.models, "dataset": populated.dataset, "images": populated.images}))


if __name__ == "__main__":
    main()
