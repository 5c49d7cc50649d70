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


def concept_texts(client: TestClient) -> list[str]:
    from precompute.world import object_image

    out = io.BytesIO()
    object_image("square", "green", 1, np.random.default_rng([8, 3])).image.save(out, format="PNG")
    r = client.post("/api/v1/discover", data={"model": MODEL}, files={"file": ("s.png", out.getvalue(), "image/png")})
    assert r.status_code == 200, r.text
    return [t["text"] for t in r.json()["before"]["concepts"]["texts"]]


def test_rewritten_decompositions_are_read_by_the_next_request(store: tuple[str, TestClient]) -> None:
    from store.repository import get_layer, unit_ids
    from store.session import make_engine, make_sessionmaker
    from store.text_pools import replace_decompositions

    url, client = store
    first = concept_texts(client)
    assert len(first) > 1 and concept_texts(client) == first  # kept: the same answer again

    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        ids = unit_ids(session, get_layer(session, MODEL, CONCEPT_LAYER).id)
        # Every neuron now decomposes into one text: the only concept any picture can have.
        replace_decompositions(session, POOL, list(ids.values()),
                               [{"unit_id": i, "rank": 0, "text": "purple", "coefficient": 1.0, "score": None}
                                for i in ids.values()])
        session.commit()
    engine.dispose()
    assert first != ["purple"]
    assert concept_texts(client) == ["purple"]
