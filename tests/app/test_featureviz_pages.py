"""The unit page and the layer grid on visualizations the featureviz job really wrote."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.server import create_app
from app.settings import Settings
from store import migrations
from store.blobs import BlobStore
from store.session import make_engine, make_sessionmaker
from tests.app.html import parse
from tests.app.test_pages import floats, page_and_twin
from tests.workers.precompute_helpers import single_thread
from workers.engines import StoreConfig
from workers.featureviz_job import FacetRequest, FeatureVizRequest, run_featureviz, train_facet

UNITS = (254, 260)  # both on the grid's sixth page (48 per page)


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture
def web(database_url, tmp_path):
    from precompute.registry import load_embedded
    from store.loading import register

    loaded = load_embedded("toy-rn")
    migrations.upgrade(database_url)
    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        register(session, loaded)
    engine.dispose()
    store = StoreConfig(database_url, str(tmp_path / "blobs"))
    train_facet(store, FacetRequest("toy-rn", None, "text", world=True, count=12), loaded=loaded)
    request = FeatureVizRequest("toy-rn", "layer4", units=UNITS, kinds=("channel", "neuron", "diversity", "facet"),
                                diversity=2, facets=("text",), steps=3)
    run_featureviz(store, request, show_progress=False, loaded=loaded)
    settings = Settings(database_url=database_url, blob_url=store.blob_url, data_dir=tmp_path / "data", device="cpu")
    with TestClient(create_app(settings)) as client:
        yield client


def test_unit_page_shows_every_visualization_with_its_activation(web: TestClient) -> None:
    doc, twin = page_and_twin(web, f"/models/toy-rn/layer4/{UNITS[0]}")
    fv = twin["featureviz"]
    assert [(e["kind"], e["variant"]) for e in fv["main"]] == [("channel", ""), ("neuron", "")]
    assert [e["variant"] for e in fv["diversity"]] == ["0", "1"]
    assert [e["variant"] for e in fv["facets"]] == ["text"]
    for entry in fv["main"] + fv["diversity"] + fv["facets"]:
        assert set(entry) >= {"kind", "variant", "image_url", "final_activation", "parameters"}
        assert entry["parameters"]["steps"] == 3 and isinstance(entry["final_activation"], float)
        image = web.get(entry["image_url"])
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert fv["facets"][0]["parameters"]["facet_layer"] == "layer3"
    main = doc.one("section", data_section="featureviz")
    assert [f["data-kind"] for f in main.find_all("figure")] == ["channel", "neuron"]
    assert floats([f["data-activation"] for f in main.find_all("figure")]) == floats([e["final_activation"] for e in fv["main"]])
    variants = doc.one("section", data_section="featureviz-variants")
    shown = variants.find_all("span", data_activation=True)
    assert floats([s["data-activation"] for s in shown]) == floats([e["final_activation"] for e in fv["diversity"] + fv["facets"]])


def test_layer_grid_shows_the_channel_thumbnails(web: TestClient, tmp_path) -> None:
    doc, twin = page_and_twin(web, "/models/toy-rn/layer4?page=6")
    by_index = {u["index"]: u for u in twin["units"]}
    unit = web.get(f"/api/v1/models/toy-rn/layer4/{UNITS[0]}").json()
    channel = unit["featureviz"]["main"][0]
    for index in UNITS:
        assert by_index[index]["thumbnail_kind"] == "featureviz"
        assert by_index[index]["thumbnail_url"].startswith("/blobs/")
    assert by_index[UNITS[0]]["thumbnail_url"] == channel["image_url"]  # a 64-pixel image is its own thumbnail
    assert by_index[255]["thumbnail_url"] is None  # no visualization, no dataset examples
    cards = {a["data-unit"]: a for a in doc.find_all("a", data_unit=True)}
    assert cards[str(UNITS[0])].one("img")["src"] == by_index[UNITS[0]]["thumbnail_url"]
