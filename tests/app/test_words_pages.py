"""What the toy models read, on their pages: the world's vocabulary first, with the colour units
reading their colour's name, and the reader free to switch word lists; a real model keeps the
common English words first."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.server import create_app
from app.settings import Settings
from store import repository
from store.models import Unit, WordActivation, WordEmbedding
from store.session import make_engine, make_sessionmaker
from tests.app.conftest import _postgres_schema
from tests.app.html import json_twin, parse
from tests.conftest import toy_model
from tests.world_words import (
    ENGLISH_LIST, ENGLISH_WORDS, FINAL_LAYERS, WORLD_LIST, build_world_words_store, colour_units, microscope,
    sqlite_world_words_store,
)

pytestmark = pytest.mark.slow
REAL_MODEL = "real-rn"  # registered as an open_clip RN50 with pretrained weights: not a toy model
COLOUR_UNITS = colour_units()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    folder = tmp_path_factory.mktemp(f"world-words-{request.param}")
    drop = None
    try:
        if request.param == "sqlite":
            url = sqlite_world_words_store(folder)
        else:
            url, drop = _postgres_schema()
            build_world_words_store(url, folder)
        _add_real_model(url)
        yield Settings(database_url=url, data_dir=folder, blob_url=str(folder / "blobs"), device="cpu")
    finally:
        if drop:
            drop()


def _add_real_model(url: str) -> None:
    """A registered real architecture whose unit 0 of layer4 and whose layer4 embedding hold
    the rows the words job wrote for toy-rn, under both word lists."""
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            record, layers = toy_model(REAL_MODEL, big_layer_units=4)
            repository.upsert_model(session, record, layers)
            session.flush()
            target = repository.get_layer(session, REAL_MODEL, "layer4")
            unit_id = repository.unit_ids(session, target.id)[0]
            source = repository.get_layer(session, "toy-rn", "layer4")
            rows = session.execute(
                select(WordActivation.word_list_id, WordActivation.rank, WordActivation.word, WordActivation.activation)
                .join(Unit, Unit.id == WordActivation.unit_id).where(Unit.layer_id == source.id, Unit.index == 254)
            ).all()
            session.add_all(WordActivation(unit_id=unit_id, word_list_id=w, rank=r, word=word, activation=a) for w, r, word, a in rows)
            for embedding in session.scalars(select(WordEmbedding).where(WordEmbedding.layer_id == source.id)).all():
                session.add(WordEmbedding(layer_id=target.id, word_list_id=embedding.word_list_id,
                                          vectors_uri=embedding.vectors_uri, mean_uri=embedding.mean_uri))
            session.commit()
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def client(world_store: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(world_store)) as web:
        yield web


def _page_and_twin(client: TestClient, path: str):
    page = client.get(path)
    assert page.status_code == 200, (path, page.text[:500])
    doc = parse(page.text)
    twin = client.get(json_twin(doc))
    assert twin.status_code == 200
    return doc, twin.json()


def _shown_words(doc) -> tuple[str, list[str]]:
    table = doc.one("section", data_section="words").one("table", data_word_list=True)
    return table["data-word-list"], [row["data-word"] for row in table.find_all("tr", data_word=True)]


def _choices(doc) -> list[tuple[str, str, bool]]:
    links = doc.one("p", data_word_lists=True).find_all("a", data_word_list_choice=True)
    return [(a["data-word-list-choice"], a["href"], a.get("aria-current") == "true") for a in links]


@pytest.mark.parametrize("model", list(FINAL_LAYERS))
def test_colour_units_read_their_colour_in_the_world_list(client: TestClient, model: str) -> None:
    layer = FINAL_LAYERS[model]
    assert len(COLOUR_UNITS[model]) >= 5
    for colour, unit in COLOUR_UNITS[model].items():
        doc, twin = _page_and_twin(client, f"/models/{model}/{layer}/{unit}")
        assert twin["word_list"] == WORLD_LIST and [c["id"] for c in twin["word_lists"]] == [WORLD_LIST, ENGLISH_LIST]
        assert [g["word_list"] for g in twin["words"]] == [WORLD_LIST, ENGLISH_LIST]
        top5 = [w["word"] for w in twin["words"][0]["words"][:5]]
        assert colour in top5, (model, colour, unit, top5)
        shown_list, shown = _shown_words(doc)
        assert shown_list == WORLD_LIST and colour in shown[:5]
        assert shown == [w["word"] for w in twin["words"][0]["words"]]


def test_reader_switches_word_lists_on_the_unit_page(client: TestClient) -> None:
    base = "/models/toy-rn/layer4/254"
    doc, twin = _page_and_twin(client, base)
    choices = _choices(doc)
    assert [(c, current) for c, _, current in choices] == [(WORLD_LIST, True), (ENGLISH_LIST, False)]
    assert [href for _, href, _ in choices] == [c["url"] for c in twin["word_lists"]]
    assert [c["source"] for c in twin["word_lists"]] == ["synthetic-world:vocabulary", f"wordfreq:en:{ENGLISH_WORDS}"]
    assert [a.text().strip() for a in doc.one("p", data_word_lists=True).find_all("a")] == [
        "the synthetic world's vocabulary", f"the {ENGLISH_WORDS} commonest English words"]

    english_doc, english = _page_and_twin(client, choices[1][1])
    assert english["word_list"] == ENGLISH_LIST and [g["word_list"] for g in english["words"]] == [ENGLISH_LIST]
    assert [(c["id"], c["current"]) for c in english["word_lists"]] == [(WORLD_LIST, False), (ENGLISH_LIST, True)]
    assert json_twin(english_doc) == twin["word_lists"][1]["api_url"]
    shown_list, shown = _shown_words(english_doc)
    assert shown_list == ENGLISH_LIST and shown == [w["word"] for w in english["words"][0]["words"]]
    assert shown != _shown_words(doc)[1]

    world = client.get(f"/api/v1{base}?word_list={WORLD_LIST}").json()
    assert [g["word_list"] for g in world["words"]] == [WORLD_LIST] and world["words"][0] == twin["words"][0]


def test_unknown_word_list_is_a_404_with_a_reason(client: TestClient) -> None:
    for path in ("/models/toy-rn/layer4/254?word_list=nope", "/words?word_list=nope&q=red"):
        api = client.get(f"/api/v1{path}")
        assert api.status_code == 404 and api.json()["reason"] == "unknown-word-list", api.text
        assert "nope" in api.json()["detail"] and WORLD_LIST in api.json()["detail"]
        page = client.get(path)
        assert page.status_code == 404 and page.headers["content-type"].startswith("text/html") and "nope" in page.text


def test_a_real_model_keeps_common_english_first(client: TestClient) -> None:
    doc, twin = _page_and_twin(client, f"/models/{REAL_MODEL}/layer4/0")
    assert twin["word_list"] == ENGLISH_LIST and [c["id"] for c in twin["word_lists"]] == [ENGLISH_LIST, WORLD_LIST]
    assert _shown_words(doc)[0] == ENGLISH_LIST
    words = client.get(f"/api/v1/words?model={REAL_MODEL}").json()
    assert words["word_list"] == ENGLISH_LIST and [c["id"] for c in words["word_lists"]] == [ENGLISH_LIST, WORLD_LIST]


@pytest.mark.parametrize("model", list(FINAL_LAYERS))
def test_words_page_uses_the_world_list_for_toy_models(client: TestClient, model: str) -> None:
    doc, twin = _page_and_twin(client, f"/words?model={model}&q=red&k=10")
    assert twin["layer"] == FINAL_LAYERS[model] and twin["word_list"] == WORLD_LIST
    assert [(c["id"], c["current"]) for c in twin["word_lists"]] == [(WORLD_LIST, True), (ENGLISH_LIST, False)]
    assert [(c, current) for c, _, current in _choices(doc)] == [(WORLD_LIST, True), (ENGLISH_LIST, False)]
    results = [r["word"] for r in twin["results"]]
    assert len(results) == 10 and "red" not in results
    rows = doc.one("table", id="word-results").find_all("tr", data_word=True)
    assert [r["data-word"] for r in rows] == results
    # "man" is in both lists ("red" is not among the 300 commonest English words).
    world = client.get(f"/api/v1/words?model={model}&q=man").json()
    english = client.get(world["word_lists"][1]["api_url"]).json()
    assert english["word_list"] == ENGLISH_LIST and english["q"] == "man" and english["model"] == model
    assert english["results"] and english["results"] != world["results"]


@pytest.mark.parametrize("model", [*FINAL_LAYERS, REAL_MODEL])
def test_layer_grid_and_export_read_the_list_the_unit_page_shows_first(client: TestClient, model: str) -> None:
    """The layer's grid and its bulk export show a unit's top words from the same word list as
    its unit page: the world's vocabulary for a toy model, common English for a real one,
    although `common-english` sorts first by id."""
    layer = FINAL_LAYERS.get(model, "layer4")
    unit = next(iter(COLOUR_UNITS[model].values())) if model in FINAL_LAYERS else 0
    first = WORLD_LIST if model in FINAL_LAYERS else ENGLISH_LIST
    page = client.get(f"/api/v1/models/{model}/{layer}/{unit}").json()
    assert page["words"][0]["word_list"] == first
    words = [w["word"] for w in page["words"][0]["words"]]
    grid = client.get(f"/api/v1/models/{model}/{layer}?page={unit // 48 + 1}").json()
    entry = next(u for u in grid["units"] if u["index"] == unit)
    assert entry["top_words"] == words[:3]
    export = client.get(f"/api/v1/models/{model}/{layer}/export")
    line = next(l for l in map(json.loads, export.text.splitlines()) if l["index"] == unit)
    assert line["word_list"] == first and [w["word"] for w in line["words"]] == words[:10]


def test_world_vocabulary_is_one_word_list_option_of_three(tmp_path: Path) -> None:
    from tests.world_words import cli_env

    env = cli_env(f"sqlite:///{tmp_path / 'microscope.db'}", tmp_path)
    for extra in (("--words", "5"), ("--word-file", str(tmp_path / "w.txt"))):
        result = microscope(env, "precompute", "words", "--model", "toy-rn", "--layer", "layer4", "--world-vocabulary", *extra)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and lines == ["error: choose one of --words, --word-file and --world-vocabulary"]
