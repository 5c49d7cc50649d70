"""/discover keeps each layer's directions and decompositions between requests, and a rewrite of
the decompositions (a new decompose run) is seen by the next request."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.server import create_app
from app.settings import Settings
from tests.discover_store import MODEL, POOL, prepare_discover_store

CONCEPT_LAYER = "transformer.resblocks.5.mlp"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TestClient]]:
    from store import migrations

    folder = tmp_path_factory.mktemp("discover-knowledge")
    url = f"sqlite:///{folder / 'microscope.db'}"
    migrations.upgrade(url)
    prepare_discover_store(url, folder, means=False)
    settings = Settings(database_url=url, blob_url=str(folder / "blobs"), data_dir=Path(folder / "data"), device="cpu",
                        live_rate_limit="10000/minute")
    with TestClient(create_app(settings)) as client:
        yield url, client


def _post(client: TestClient, **fields: str):
    from precompute.world import object_image

    out = io.BytesIO()
    object_image("square", "green", 1, np.random.default_rng([8, 3])).image.save(out, format="PNG")
    return client.post("/api/v1/discover", data={"model": MODEL, **fields}, files={"file": ("s.png", out.getvalue(), "image/png")})


def concept_texts(client: TestClient, **fields: str) -> list[str]:
    r = _post(client, **fields)
    assert r.status_code == 200, r.text
    return [t["text"] for t in r.json()["before"]["concepts"]["texts"]]


def _rewrite(url: str, layer: str, rows) -> None:
    """Make `rows(unit id)` the decompositions of every unit of `layer`."""
    from store.repository import get_layer, unit_ids
    from store.session import make_engine, make_sessionmaker
    from store.text_pools import replace_decompositions

    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        ids = unit_ids(session, get_layer(session, MODEL, layer).id)
        replace_decompositions(session, POOL, list(ids.values()), [row for i in ids.values() for row in rows(i)])
        session.commit()
    engine.dispose()


def test_rewritten_decompositions_are_read_by_the_next_request(store: tuple[str, TestClient]) -> None:
    url, client = store
    first = concept_texts(client, layer=CONCEPT_LAYER)
    assert len(first) > 1 and concept_texts(client, layer=CONCEPT_LAYER) == first  # kept: the same answer again
    every = concept_texts(client)
    assert every != first  # the default adds up every layer with decompositions

    # Every neuron of the last layer now decomposes into one text: the only concept it can name.
    _rewrite(url, CONCEPT_LAYER, lambda i: [{"unit_id": i, "rank": 0, "text": "purple", "coefficient": 1.0, "score": None}])
    assert first != ["purple"]
    assert concept_texts(client, layer=CONCEPT_LAYER) == ["purple"]
    # Over every layer, the other layers' texts and "purple" add up on one set of texts.
    mixed = concept_texts(client)
    assert "purple" in mixed and len(mixed) > 1 and mixed != every


def test_a_layer_without_decompositions(store: tuple[str, TestClient]) -> None:
    from tests.discovery_world import LAYERS

    url, client = store
    middle = LAYERS[MODEL][1]
    _rewrite(url, middle, lambda i: [])
    r = _post(client)
    assert r.status_code == 200, r.text
    assert r.json()["layers"] == [LAYERS[MODEL][0], LAYERS[MODEL][2]]  # the default leaves it out
    assert client.get(f"/api/v1/discover?model={MODEL}").json()["concept_layers"] == r.json()["layers"]
    r = _post(client, layers=f"{LAYERS[MODEL][0]},{middle}")
    assert r.status_code == 422 and r.json()["reason"] == "no-decompositions" and middle in r.json()["detail"]
