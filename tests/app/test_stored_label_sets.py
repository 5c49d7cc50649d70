"""Live zero-shot label sets on a real CLIP (random-initialised ViT-B-32): ImageNet's classes are
read from the store's pool embeddings (no text-tower call, seconds rather than hours), and a
model without them is refused with the command that stores them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image

from app.model_service import ModelService
from app.server import create_app
from tests.app.conftest import Store
from tests.app.images import png

STORED = "vit-b-32-stored"  # with stored ImageNet embeddings
BARE = "vit-b-32-bare"  # without
LAYER = "transformer.resblocks.10.mlp"


@pytest.fixture(scope="module")
def vit():
    from precompute.registry import load_model

    return load_model(STORED, "ViT-B-32")  # seeded random weights, as the store reloads them


def _sessions(store: Store):
    from store.session import make_engine, make_sessionmaker

    engine = make_engine(store.database_url)
    return engine, make_sessionmaker(engine)


def _prepare(store: Store, vit) -> np.ndarray:
    """Both models registered; ImageNet's pool with random unit-length embeddings under STORED,
    written through the store's own write (`pool_embeddings`); random directions and a few
    decompositions for LAYER so that /discover has a concept layer. Returns the stored rows."""
    from precompute.text_pools import IMAGENET_SOURCE, pool_texts
    from store.blobs import BlobStore
    from store.directions import LayerDirections, save_layer_directions
    from store.loading import register
    from store.queries import datasets
    from store.repository import get_layer, get_model, unit_ids
    from store.text_pools import add_pool, pool_embeddings, replace_decompositions

    engine, sessions = _sessions(store)
    try:
        with sessions() as session:
            for model_id in (STORED, BARE):
                if get_model(session, model_id) is None:
                    register(session, replace(vit, model_id=model_id))
            texts = pool_texts("imagenet").texts
            pool, _ = add_pool(session, "imagenet", texts, IMAGENET_SOURCE)
            rng = np.random.default_rng(3)
            random = rng.standard_normal((len(texts), 512)).astype(np.float32)
            blobs = BlobStore(store.blob_url)
            vectors, _ = pool_embeddings(session, blobs, STORED, pool,
                                         lambda: random / np.linalg.norm(random, axis=1, keepdims=True))
            layer = get_layer(session, STORED, LAYER)
            units = np.arange(3072, dtype=np.int64)
            directions = rng.standard_normal((3072, 512)).astype(np.float32)
            directions /= np.linalg.norm(directions, axis=1, keepdims=True)
            save_layer_directions(session, blobs, layer.id, LayerDirections(
                units, directions, 0.01 * directions, np.full(3072, 0.05, dtype=np.float32), "second-order",
                datasets(session)[0]["id"], 8))
            ids = unit_ids(session, layer.id)
            replace_decompositions(session, "imagenet", list(ids.values()), [
                {"unit_id": ids[int(u)], "rank": rank, "text": texts[(7 * int(u) + rank) % len(texts)],
                 "coefficient": 0.5 - 0.2 * rank, "score": None} for u in units for rank in range(2)])
            session.commit()
    finally:
        engine.dispose()
    return vectors


@pytest.fixture
def counted(live_store: Store, vit) -> Iterator[tuple[TestClient, list[int], np.ndarray]]:
    """A client whose model service loads registered models as the server does and counts the
    prompts every loaded model's text tower encodes (the real encode_text, wrapped)."""
    from store.loading import load_registered

    vectors = _prepare(live_store, vit)
    calls: list[int] = []
    app = create_app(live_store.settings())

    def load(model_id: str):
        with app.state.sessionmaker() as session:
            loaded = load_registered(session, model_id, device="cpu")
        encode = loaded.model.encode_text

        def encode_text(tokens, *args, **kwargs):
            calls.append(int(tokens.shape[0]))
            return encode(tokens, *args, **kwargs)

        loaded.model.encode_text = encode_text
        return loaded

    app.state.model_service = ModelService(load, timeout=600)
    with TestClient(app) as client:
        yield client, calls, vectors


def _circle() -> Image.Image:
    from precompute.world import object_image

    return object_image("circle", "blue", 1, np.random.default_rng([22, 1])).image


def _expected(vit, vectors: np.ndarray, images: list[Image.Image]) -> torch.Tensor:
    """ImageNet probabilities straight from the stored rows: each class reads the row of its
    name in the pool (two names appear twice among the 1,000 classes)."""
    import open_clip

    from precompute.text_pools import pool_texts

    row = {t: i for i, t in enumerate(pool_texts("imagenet").texts)}
    classes = torch.from_numpy(vectors)[[row[name] for name in open_clip.IMAGENET_CLASSNAMES]]
    with torch.inference_mode():
        image = F.normalize(vit.model.encode_image(torch.stack([vit.preprocess(i) for i in images])), dim=-1)
        return (vit.model.logit_scale.exp() * image @ classes.t()).softmax(dim=-1)


def _check_top(entries: list[dict], probs: torch.Tensor) -> None:
    values, indices = probs.topk(len(entries))
    assert [e["index"] for e in entries] == indices.tolist()
    assert [e["probability"] for e in entries] == pytest.approx(values.tolist(), abs=2e-5)


def test_typographic_probe_reads_stored_imagenet_embeddings(counted, vit) -> None:
    from precompute.typographic import render_attack

    client, calls, vectors = counted
    data = {"model": STORED, "layer": LAYER, "text": "square"}
    first = client.post("/api/v1/probe/typographic", data=data, files={"file": ("c.png", png(_circle()), "image/png")})
    assert first.status_code == 200, first.text
    began = time.perf_counter()
    r = client.post("/api/v1/probe/typographic", data=data, files={"file": ("c.png", png(_circle()), "image/png")})
    elapsed = time.perf_counter() - began
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["labels"]["id"] == "imagenet" and body["labels"]["classes"] == 1000  # the default for a real CLIP
    probs = _expected(vit, vectors, [_circle(), render_attack(_circle(), "square").image])
    _check_top(body["before"], probs[0])
    _check_top(body["after"], probs[1])
    assert calls == []  # 80,000 prompts would take hours through this CPU's text tower
    assert elapsed < 30, elapsed


def test_discover_reads_stored_imagenet_embeddings(counted, vit) -> None:
    client, calls, vectors = counted
    r = client.post("/api/v1/discover", data={"model": STORED, "layer": LAYER},
                    files={"file": ("c.png", png(_circle()), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["labels"] == "imagenet"
    _check_top(body["before"]["prediction"], _expected(vit, vectors, [_circle()])[0])
    assert calls == []


@pytest.mark.slow
def test_the_stored_embedding_is_the_live_class_embedding(vit) -> None:
    """ImageNet's pool embeds a class as the zero-shot classifier names it on a real CLIP."""
    from precompute.discovery import class_embedding
    from precompute.text_pools import IMAGENET_SOURCE, encode_pool

    pooled = encode_pool(vit.model, vit.tokenizer, ["goldfish"], IMAGENET_SOURCE)[0]
    assert torch.allclose(pooled, class_embedding(vit, "goldfish"), atol=1e-5)


def test_big_label_sets_without_stored_embeddings_are_refused_with_the_command(live_store: Store, live_web: TestClient,
                                                                               vit) -> None:
    _prepare(live_store, vit)
    files = {"file": ("c.png", png(_circle()), "image/png")}
    command = f"microscope textpools add imagenet --imagenet --model {BARE}"
    began = time.perf_counter()
    r = live_web.post("/api/v1/probe/typographic", data={"model": BARE, "layer": LAYER, "text": "square"}, files=files)
    assert r.status_code == 422 and r.json()["reason"] == "no-text-embeddings", r.text
    assert command in r.json()["detail"] and r.json()["command"] == command
    page = live_web.post("/probe/typographic", data={"model": BARE, "layer": LAYER, "text": "square", "labels": "imagenet"},
                         files=files)
    assert page.status_code == 422 and command in page.text and "text/html" in page.headers["content-type"]
    d = live_web.post("/api/v1/discover", data={"model": BARE}, files=files)
    assert d.status_code == 422 and d.json()["reason"] == "no-text-embeddings" and command in d.json()["detail"]
    many = ", ".join(f"label {i}" for i in range(26))  # 26 x 80 prompts
    m = live_web.post("/api/v1/probe/typographic", data={"model": BARE, "layer": LAYER, "text": "square",
                                                         "custom_labels": many}, files=files)
    assert m.status_code == 422 and m.json()["reason"] == "too-many-labels-live" and "at most 25 labels" in m.json()["detail"]
    assert time.perf_counter() - began < 20
    assert BARE not in live_web.app.state.model_service.loaded_models  # refused before the model was loaded
