"""The web app against a real, migrated database, through FastAPI's TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.server import create_app
from app.settings import Settings
from store import repository
from store.blobs import BlobStore
from store.session import make_engine, make_sessionmaker, session_scope
from tests.app.html import parse
from tests.conftest import toy_model


@pytest.fixture
def client(app_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings)) as client:  # `with` runs the lifespan: engine disposed after
        yield client


def _register(settings: Settings, *models: str) -> None:
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            for i, model_id in enumerate(models):
                record, layers = toy_model(model_id, big_layer_units=8 + i)
                repository.upsert_model(session, record, layers)
    finally:
        engine.dispose()


class _Rows(HTMLParser):
    """Collects the data-* attributes of the model rows and the visible text of their cells."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.links: list[str] = []
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
        if tag == "tr" and "data-model-id" in a:
            self.rows.append({"attrs": a, "cells": {}})
        if tag == "td" and self.rows and a.get("class"):
            self._cell = a["class"].split()[-1]

    def handle_data(self, data: str) -> None:
        if self._cell and self.rows:
            self.rows[-1]["cells"][self._cell] = self.rows[-1]["cells"].get(self._cell, "") + data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["schema_revision"] == body["expected_revision"] is not None


def test_healthz_reports_unmigrated_database(database_url: str, tmp_path: Any) -> None:
    settings = Settings(database_url=database_url, data_dir=tmp_path, blob_url=str(tmp_path / "b"))
    with TestClient(create_app(settings)) as client:
        r = client.get("/healthz")
    assert r.status_code == 503
    assert r.json()["status"] == "error" and r.json()["schema_revision"] is None


def test_index_html_matches_json(client: TestClient, app_settings: Settings) -> None:
    _register(app_settings, "toy-rn", "toy-vit")

    api = client.get("/api/v1/models")
    assert api.status_code == 200
    models = api.json()["models"]
    assert api.json()["count"] == 2
    by_id = {m["id"]: m for m in models}
    assert by_id["toy-rn"]["layer_count"] == 3
    assert by_id["toy-rn"]["unit_count"] == 1024 + 2048 + 8
    assert by_id["toy-vit"]["unit_count"] == 1024 + 2048 + 9

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    parser = _Rows()
    parser.feed(page.text)
    html_rows = {
        r["attrs"]["data-model-id"]: (int(r["attrs"]["data-layers"]), int(r["attrs"]["data-units"])) for r in parser.rows
    }
    assert html_rows == {m["id"]: (m["layer_count"], m["unit_count"]) for m in models}
    # What a reader sees agrees with the attributes (numbers are shown with thousands separators).
    for row in parser.rows:
        assert int(row["cells"]["units"].replace(",", "")) == int(row["attrs"]["data-units"])
        assert row["cells"]["model-id"].strip() == row["attrs"]["data-model-id"]
    assert "/api/v1/models" in parser.links  # the page links its JSON twin
    assert "/models/toy-rn" in parser.links


def test_empty_index(client: TestClient) -> None:
    body = client.get("/api/v1/models").json()
    assert {k: body[k] for k in ("models", "count", "api_url")} == {"models": [], "count": 0, "api_url": "/api/v1/models"}
    assert body["pagination"]["total"] == 0 and body["pagination"]["next_url"] is None
    assert "No models registered yet" in client.get("/").text


def test_model_detail_and_page(client: TestClient, app_settings: Settings) -> None:
    _register(app_settings, "toy-rn")
    detail = client.get("/api/v1/models/toy-rn").json()
    assert [layer["name"] for layer in detail["layers"]] == ["layer3", "layer4", "attnpool"]
    assert detail["layers"][0]["spatial"] == [14, 14]
    assert detail["preprocess"]["interpolation"] == "bicubic"

    page = client.get("/models/toy-rn")
    assert page.status_code == 200
    assert 'href="/api/v1/models/toy-rn"' in page.text
    for layer in detail["layers"]:
        assert f'data-layer="{layer["name"]}"' in page.text


def test_unknown_model_is_404_with_reason(client: TestClient) -> None:
    r = client.get("/api/v1/models/no-such-model")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert r.json()["reason"] == "unknown-model"
    assert "no-such-model" in r.json()["detail"]

    page = client.get("/models/no-such-model")
    assert page.status_code == 404 and "text/html" in page.headers["content-type"]
    assert "no-such-model" in page.text


def test_docs_and_static(client: TestClient) -> None:
    # Swagger UI and ReDoc pages reference only the server's own files, so they work offline.
    for path, assets in (("/docs", {"swagger-ui-bundle.js", "swagger-ui.css"}), ("/redoc", {"redoc.standalone.js"})):
        page = client.get(path)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        doc = parse(page.text)
        urls = [n["src"] for n in doc.find_all("script", src=True)] + [n["href"] for n in doc.find_all("link", href=True)]
        assert "://" not in page.text and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
        assert assets <= {u.rsplit("/", 1)[-1] for u in urls}, urls
        for url in urls:
            assert client.get(url).status_code == 200, url
        assert "/api/v1/openapi.json" in page.text
    spec = client.get("/api/v1/openapi.json").json()
    assert "/api/v1/models/{model_id}" in spec["paths"]
    css = client.get("/static/style.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]


def test_blobs_served_immutable(client: TestClient, app_settings: Settings) -> None:
    uri = BlobStore(app_settings.blob_url).put(b"\x89PNG not really", suffix=".png")
    name = BlobStore.blob_name(uri)
    r = client.get(f"/blobs/{name}")
    assert r.status_code == 200 and r.content == b"\x89PNG not really"
    assert r.headers["content-type"] == "image/png"
    assert "immutable" in r.headers["cache-control"]
    assert client.get("/blobs/" + "0" * 64 + ".png").status_code == 404
    assert client.get("/blobs/..%2F..%2Fetc%2Fpasswd").status_code == 404
