"""Every page that lists a unit shows its picture, on a store filled by the real examples and
words jobs (toy-rn's layer4 on 120 synthetic images): the nearest-units strip, the layer grid,
text and prompt search, a collection and the probe, as HTML and in the JSON twins. Each
picture is the unit's strongest dataset example (its crop, cut on request) until a feature visualization
exists, and it is served as an image. Listing more units costs no more SQL statements."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, event, select

from app.server import create_app
from app.settings import Settings
from precompute.examples import ExampleParams
from store.blobs import BlobStore
from store.models import DatasetExample, FeatureViz, Layer, StoredImage, Unit
from store.session import make_engine, make_sessionmaker
from tests.app.html import Node, parse
from tests.conftest import fresh_postgres_schema
from tests.sample_store import create_token, store_directions
from tests.workers.precompute_helpers import register_synthetic, single_thread, store_config

MODEL, LAYER, DATASET, IMAGES = "toy-rn", "layer4", "world", 120
WORDS = ("red", "green", "blue", "yellow", "purple", "circle", "square", "triangle", "star", "one", "two", "three",
         "cat", "dog", "tree", "house", "car", "boat")
# Units given a second-order direction, so that the prompt search has something to rank; the
# nearest-units checks use units without one, whose neighbours come from the word embedding.
WITH_DIRECTION = range(0, 16)
WITH_FEATUREVIZ = 200  # one unit with a (channel) feature visualization, which beats its example
COLLECTED = (30, 31, 32, 33, 34, 200)


@dataclass
class JobsStore:
    database_url: str
    blob_url: str
    token: str

    def settings(self) -> Settings:
        return Settings(database_url=self.database_url, blob_url=self.blob_url, data_dir=Path(self.blob_url).parent / "data",
                        device="cpu", live_rate_limit="10000/minute")


@contextmanager
def _database(backend: str, folder: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'microscope.db'}"
        return
    with fresh_postgres_schema() as url:
        yield url


def _png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(out, format="PNG")
    return out.getvalue()


def _fill(url: str, folder: Path) -> None:
    from precompute.architectures import architecture
    from precompute.registry import load_embedded
    from store import migrations
    from store.loading import register
    from workers.examples_job import ExamplesRequest, run_examples
    from workers.words_job import WordsRequest, run_words

    migrations.upgrade(url)
    register_synthetic(url, folder, DATASET, IMAGES)
    loaded = load_embedded(MODEL)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            register(session, loaded, "embedded toy-rn")
            session.commit()
        config = store_config(url, folder)
        params = ExampleParams(k=3, hist_bins=8, sample_bins=4, buckets=2, per_bucket=1)
        run_examples(config, ExamplesRequest(model_id=MODEL, dataset_id=DATASET, layers=(LAYER,), params=params, batch_size=40),
                     show_progress=False, loaded=loaded)
        run_words(config, WordsRequest(model_id=MODEL, layers=(LAYER,), words=WORDS, source="colours and things", top=5,
                                       batch_size=len(WORDS)), show_progress=False, loaded=loaded)
        # No job writes directions or feature visualizations yet: store a few, as those jobs will.
        blobs = BlobStore(str(folder / "blobs"))
        rng = np.random.default_rng(5)
        embed_dim = architecture(MODEL).embed_dim
        with make_sessionmaker(engine)() as session:
            units = {u.index: u for u in session.scalars(select(Unit).join(Layer).where(Layer.model_id == MODEL,
                                                                                         Layer.name == LAYER))}
            store_directions(session, blobs, units[0].layer_id,
                             {index: rng.normal(size=embed_dim) for index in WITH_DIRECTION})
            session.add(FeatureViz(unit_id=units[WITH_FEATUREVIZ].id, kind="channel", variant="",
                                   blob_uri=blobs.put(_png((200, 30, 40)), ".png"), final_activation=1.0, parameters={}))
            session.commit()
    finally:
        engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def jobs_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobsStore]:
    folder = tmp_path_factory.mktemp(f"thumbnails-{request.param}")
    for _ in single_thread():
        with _database(request.param, folder) as url:
            _fill(url, folder)
            yield JobsStore(url, str(folder / "blobs"), create_token(url, "collector"))


@pytest.fixture(scope="module")
def client(jobs_store: JobsStore) -> Iterator[TestClient]:
    with TestClient(create_app(jobs_store.settings())) as c:
        yield c


@pytest.fixture(scope="module")
def expected(jobs_store: JobsStore) -> dict[int, tuple[str, str]]:
    """Per unit index, the picture it must show, read straight from the tables: the main
    feature visualization, else the crop of its rank-0 top dataset example."""
    engine = make_engine(jobs_store.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            in_layer = (Layer.model_id == MODEL, Layer.name == LAYER)
            examples = session.execute(
                select(Unit.index, DatasetExample.crop_box, StoredImage.blob_uri)
                .join(DatasetExample, DatasetExample.unit_id == Unit.id).join(Layer, Layer.id == Unit.layer_id)
                .join(StoredImage, StoredImage.id == DatasetExample.image_id)
                .where(*in_layer, DatasetExample.sign == "top", DatasetExample.rank == 0)
            ).all()
            featureviz = session.execute(
                select(Unit.index, FeatureViz.blob_uri).join(FeatureViz, FeatureViz.unit_id == Unit.id)
                .join(Layer, Layer.id == Unit.layer_id).where(*in_layer, FeatureViz.kind == "channel")
            ).all()
            unit_count = session.scalar(select(Layer.units).where(*in_layer))
    finally:
        engine.dispose()
    out = {index: (f"/blobs/crop/{MODEL}/{box}/{BlobStore.blob_name(image)}", "example") for index, box, image in examples}
    assert len(out) == unit_count == 768  # the examples job gave every unit its strongest example
    assert all(box for _, box, _ in examples)  # a spatial layer: each example has its crop box
    out.update({index: (f"/blobs/{BlobStore.blob_name(uri)}", "featureviz") for index, uri in featureviz})
    return out


def _unit_of(entry: dict[str, Any]) -> int:
    return int(entry["api_url"].rsplit("/", 1)[1])


def assert_pictured(client: TestClient, entries: list[dict[str, Any]], cards: list[Node],
                    expected: dict[int, tuple[str, str]]) -> None:
    """Each listed unit, in the JSON twin and on the page, shows its own picture, and the
    picture answers as an image."""
    assert entries, "nothing listed"
    assert [int(card["data-unit"]) for card in cards] == [_unit_of(e) for e in entries]
    for entry, card in zip(entries, cards):
        url, kind = expected[_unit_of(entry)]
        assert (entry["thumbnail_url"], entry["thumbnail_kind"]) == (url, kind), entry
        images = card.find_all("img")
        assert [img["src"] for img in images if img["src"] == url] == [url], card.attrs
        img = next(img for img in images if img["src"] == url)
        assert ("example" in img["class"].split()) == (kind == "example")
        assert card.find("span", class_="thumb none") is None  # no empty placeholder
    for url in {e["thumbnail_url"] for e in entries}:
        served = client.get(url)
        assert served.status_code == 200 and served.headers["content-type"].startswith("image/"), url
        assert Image.open(io.BytesIO(served.content)).size[0] > 0


def _page(client: TestClient, path: str, **kwargs: Any) -> Node:
    response = client.get(path, **kwargs)
    assert response.status_code == 200, response.text[:300]
    return parse(response.text)


@pytest.mark.parametrize("index", [100, 457])
def test_nearest_units_show_their_pictures(client: TestClient, expected: dict, index: int) -> None:
    twin = client.get(f"/api/v1/models/{MODEL}/{LAYER}/{index}").json()
    nearest = twin["nearest"]
    assert nearest["basis"] == "word_embedding" and len(nearest["units"]) == 12
    section = _page(client, f"/models/{MODEL}/{LAYER}/{index}").one("section", data_section="nearest")
    assert_pictured(client, nearest["units"], section.find_all("a", data_unit=True), expected)


def test_a_feature_visualization_wins_over_the_example(client: TestClient, expected: dict) -> None:
    assert expected[WITH_FEATUREVIZ][1] == "featureviz"
    twin = client.get(f"/api/v1/models/{MODEL}/{LAYER}", params={"page": WITH_FEATUREVIZ // 48 + 1}).json()
    grid = _page(client, f"/models/{MODEL}/{LAYER}", params={"page": WITH_FEATUREVIZ // 48 + 1}).one("div", id="units")
    entry = next(u for u in twin["units"] if u["index"] == WITH_FEATUREVIZ)
    assert_pictured(client, [entry], grid.find_all("a", data_unit=str(WITH_FEATUREVIZ)), expected)


@pytest.mark.parametrize("page", [1, 5, 16])
def test_layer_grid_shows_every_unit_with_a_picture(client: TestClient, expected: dict, page: int) -> None:
    twin = client.get(f"/api/v1/models/{MODEL}/{LAYER}", params={"page": page}).json()
    grid = _page(client, f"/models/{MODEL}/{LAYER}", params={"page": page}).one("div", id="units")
    assert len(twin["units"]) == 48
    assert_pictured(client, twin["units"], grid.find_all("a", data_unit=True), expected)


@pytest.mark.parametrize("word", ["red", "circle"])
def test_word_search_results_show_their_pictures(client: TestClient, expected: dict, word: str) -> None:
    twin = client.get("/api/v1/search", params={"q": word, "per_page": 30}).json()
    assert twin["pagination"]["total"] > 0 and all(r["matched"] == "word" for r in twin["results"])
    rows = _page(client, "/search", params={"q": word, "per_page": 30}).one("section", id="results").find_all("tr", data_unit=True)
    assert_pictured(client, twin["results"], rows, expected)


def test_prompt_search_results_show_their_pictures(client: TestClient, expected: dict) -> None:
    params = {"text": "a red circle", "model": MODEL, "k": 24}  # as the page asks: every direction, in one code
    twin = client.get("/api/v1/search/prompt", params=params).json()
    assert twin["layers_searched"] == [LAYER] and len(twin["results"]) == len(WITH_DIRECTION)
    assert {r["index"] for r in twin["results"]} == set(WITH_DIRECTION)
    section = _page(client, "/search", params={"prompt": "a red circle", "model": MODEL}).one("section", id="prompt-results")
    cards = section.find_all("a", data_unit=True)
    assert_pictured(client, twin["results"], cards, expected)


def test_collection_members_show_their_pictures(client: TestClient, jobs_store: JobsStore, expected: dict) -> None:
    headers = {"Authorization": f"Bearer {jobs_store.token}"}
    collection = f"pictured-{uuid.uuid4().hex[:8]}"
    assert client.post("/api/v1/collections", json={"id": collection, "title": "Pictured"}, headers=headers).status_code == 201
    for index in COLLECTED:
        added = client.post(f"/api/v1/collections/{collection}/units", json={"model": MODEL, "layer": LAYER, "index": index},
                            headers=headers)
        assert added.status_code == 200, added.text
    twin = client.get(f"/api/v1/collections/{collection}").json()
    assert [u["index"] for u in twin["units"]] == list(COLLECTED)
    members = _page(client, f"/collections/{collection}").one("div", id="members").find_all("a", data_unit=True)
    assert_pictured(client, twin["units"], members, expected)
    assert twin["units"][-1]["thumbnail_kind"] == "featureviz"


def test_probe_results_show_their_pictures(client: TestClient, expected: dict) -> None:
    form = {"model": MODEL, "layer": LAYER, "dataset": DATASET, "position": "7", "top_k": "10"}
    twin = client.post("/api/v1/probe", data=form)
    assert twin.status_code == 200, twin.text
    units = twin.json()["units"]
    assert len(units) == 10
    page = client.post("/probe", data=form)
    assert page.status_code == 200, page.text[:300]
    cards = parse(page.text).one("div", class_="grid probe-units").find_all("a", data_unit=True)
    assert_pictured(client, units, cards, expected)


# -- no statement per listed unit ----------------------------------------------------------------
@contextmanager
def counting_statements() -> Iterator[list[str]]:
    """Every SQL statement any engine in this process sends while the block runs."""
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(Engine, "before_cursor_execute", count)


def _statements(client: TestClient, path: str, params: dict[str, Any]) -> int:
    with counting_statements() as statements:
        response = client.get(path, params=params)
    assert response.status_code == 200, response.text[:300]
    return len(statements)


@pytest.mark.parametrize("path", [f"/models/{MODEL}/{LAYER}", f"/api/v1/models/{MODEL}/{LAYER}"])
def test_the_layer_grid_costs_the_same_statements_for_5_or_200_units(client: TestClient, path: str) -> None:
    few = _statements(client, path, {"per_page": 5, "sort": "activation"})
    many = _statements(client, path, {"per_page": 200, "sort": "activation"})
    assert few == many


@pytest.mark.parametrize("path", ["/search", "/api/v1/search"])
def test_search_costs_the_same_statements_for_2_or_100_results(client: TestClient, path: str) -> None:
    few = _statements(client, path, {"q": "r", "per_page": 2})
    many = _statements(client, path, {"q": "r", "per_page": 100})
    assert few == many


def test_nearest_units_cost_the_same_statements_for_1_or_12_neighbours(jobs_store: JobsStore) -> None:
    from app.pages.unit import nearest_units
    from app.urls import Urls
    from app.vectors import VectorCache
    from store import queries

    engine = make_engine(jobs_store.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            unit = queries.unit_core(session, MODEL, LAYER, 300)
            cache = VectorCache(BlobStore(jobs_store.blob_url))
            nearest_units(session, cache, unit["layer_id"], unit, MODEL, LAYER, Urls(""), k=1)  # fills the vector cache
            counts = []
            for k in (1, 12):
                with counting_statements() as statements:
                    found = nearest_units(session, cache, unit["layer_id"], unit, MODEL, LAYER, Urls(""), k=k)
                assert len(found["units"]) == k and all(u["thumbnail_url"] for u in found["units"])
                counts.append(len(statements))
    finally:
        engine.dispose()
    assert counts[0] == counts[1]
