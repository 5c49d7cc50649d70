"""The maxtext job's output on the unit page's "Text feature visualization" panel and in its
JSON twin, over a real store (planted toy-vit directions, tests.text_side): what the page shows
is what the job wrote, and a unit without a maximal text says so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.server import create_app
from app.settings import Settings
from precompute.registry import load_embedded
from store.models import MaximalText, Unit
from store.session import make_engine, make_sessionmaker
from tests.app.html import parse
from tests.text_side import LAYER, MODEL, SILENT, prepare_planted_store
from tests.workers.precompute_helpers import single_thread, store_config
from workers.maxtext_job import MaxTextRequest, run_maxtext

RED_UNIT = 3


@pytest.fixture(scope="module")
def toy_vit():
    return load_embedded(MODEL)


@pytest.fixture
def client(migrated_url: str, tmp_path: Path, toy_vit) -> Iterator[TestClient]:
    for _ in single_thread():
        prepare_planted_store(migrated_url, tmp_path, toy_vit)
        run_maxtext(store_config(migrated_url, tmp_path),
                    MaxTextRequest(model_id=MODEL, layer=LAYER, length=2, steps=6, candidates=8), show_progress=False,
                    loaded=toy_vit)
        settings = Settings(database_url=migrated_url, data_dir=tmp_path / "data", blob_url=str(tmp_path / "blobs"),
                            device="cpu", page_cache_seconds=0)
        with TestClient(create_app(settings)) as test_client:
            yield test_client


def _stored(url: str, index: int) -> MaximalText:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            return session.execute(select(MaximalText).join(Unit, Unit.id == MaximalText.unit_id)
                                   .where(Unit.index == index)).scalar_one()
    finally:
        engine.dispose()


def test_the_panel_shows_the_maximal_text_beside_the_best_word(client: TestClient, migrated_url: str) -> None:
    stored = _stored(migrated_url, RED_UNIT)
    twin = client.get(f"/api/v1/models/{MODEL}/{LAYER}/{RED_UNIT}").json()
    found = twin["maximal_text"]
    assert "text feature visualization" not in twin["missing"]
    assert (found["text"], found["tokens"], found["start_text"], found["steps"], found["dataset"]) == (
        stored.text, stored.tokens, stored.start_text, stored.steps, stored.dataset_id)
    assert found["score"] == pytest.approx(stored.score) and found["start_score"] == pytest.approx(stored.start_score)
    assert found["parameters"] == {"length": 2, "steps": 6, "candidates": 8, "starts": 4}
    assert found["start_text"] == "red" and found["score"] >= found["start_score"]

    panel = parse(client.get(f"/models/{MODEL}/{LAYER}/{RED_UNIT}").text).one("section", data_section="maximal-text")
    assert panel.one("h2").text() == "Text feature visualization"
    text = panel.one("dd", class_="maximal-text")
    word = panel.one("dd", class_="start-text")
    assert text["data-text"] == found["text"] and text.one("a").text() == found["text"]
    assert word["data-text"] == found["start_text"] and word.one("a").text() == "red"
    assert float(text.one("span")["data-score"]) == pytest.approx(found["score"])
    assert f"{found['score']:.3f}" in text.text() and f"{found['start_score']:.3f}" in word.text()


@pytest.mark.parametrize("index", [SILENT, 7])  # a zero direction; no direction at all
def test_a_unit_without_a_maximal_text_says_so(client: TestClient, index: int) -> None:
    twin = client.get(f"/api/v1/models/{MODEL}/{LAYER}/{index}").json()
    assert twin["maximal_text"] is None and "text feature visualization" in twin["missing"]
    panel = parse(client.get(f"/models/{MODEL}/{LAYER}/{index}").text).one("section", data_section="maximal-text")
    assert "No maximal text has been computed for this unit yet." in panel.text()
    assert panel.find("dd") is None


def test_the_response_schema_documents_the_field(client: TestClient) -> None:
    schema = client.get("/api/v1/openapi.json").json()["components"]["schemas"]
    field = schema["UnitPage"]["properties"]["maximal_text"]
    assert {"$ref": "#/components/schemas/MaximalTextOut"} in field["anyOf"]
    assert {"text", "tokens", "score", "start_text", "start_score", "steps"} <= set(schema["MaximalTextOut"]["properties"])
