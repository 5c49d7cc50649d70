"""Refusals: every Problem answers with its status, as JSON {detail, reason, ...} for the API
and for clients that ask for JSON, and as an error page for the browser; the ones that pass
with time carry Retry-After. Against the real app on SQLite and Postgres."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.server import create_app
from app.settings import Settings
from store import repository
from store.session import make_engine, make_sessionmaker, session_scope
from tests.app.conftest import Store
from tests.app.html import parse
from tests.conftest import toy_model


def _error_page(response) -> tuple[str, str, str]:
    """The title, reason and sentence an error page shows."""
    assert response.headers["content-type"].startswith("text/html")
    lede = parse(response.text).one("p", class_="lede")
    return parse(response.text).one("h1").text().strip(), lede["data-reason"], lede.text().strip()


def test_not_found_is_json_for_the_api_and_a_page_for_the_browser(web: TestClient) -> None:
    api = web.get("/api/v1/models/no-such-model")
    assert api.status_code == 404 and api.headers["content-type"] == "application/json"
    assert api.json() == {"detail": "No model with id 'no-such-model' is registered.", "reason": "unknown-model"}

    page = web.get("/models/no-such-model")
    assert page.status_code == 404
    assert _error_page(page) == ("Not found", "unknown-model", "No model with id 'no-such-model' is registered.")
    assert parse(page.text).find_all("a", href="/")  # a way back

    # A program that asks for JSON gets the API's body from a page's address too.
    asked = web.get("/models/no-such-model", headers={"Accept": "application/json"})
    assert asked.status_code == 404 and asked.json() == api.json()
    # So does a browser's page for a unit past the end of its layer, with its own reason.
    past = web.get("/models/toy-rn/layer3/1024")
    assert past.status_code == 404 and _error_page(past)[1] == "unknown-unit"


def test_unmatched_paths_use_the_same_shape(web: TestClient) -> None:
    assert web.get("/api/v1/no/such/thing").json() == {"detail": "Not Found", "reason": "not-found"}
    page = web.get("/no/such/thing")
    assert page.status_code == 404 and _error_page(page) == ("Not found", "not-found", "Not Found")
    wrong = web.delete("/api/v1/models")
    assert wrong.status_code == 405 and wrong.json()["reason"] == "method-not-allowed" and "GET" in wrong.headers["allow"]


def test_unprocessable_query_carries_its_extra_fields(web: TestClient) -> None:
    api = web.get("/api/v1/words", params={"q": "red zzzq - qqq"})
    assert api.status_code == 422
    assert api.json() == {"detail": "not in the word list 'toy-words': qqq, zzzq", "reason": "unknown-words",
                          "unknown_words": ["qqq", "zzzq"]}
    page = web.get("/words", params={"q": "red zzzq - qqq"})
    assert page.status_code == 422
    assert _error_page(page) == ("Cannot answer that", "unknown-words", "not in the word list 'toy-words': qqq, zzzq")
    assert [c.text() for c in parse(page.text).find_all("code", class_="unknown-word")] == ["qqq", "zzzq"]


def test_store_refusals_keep_their_status(web: TestClient, store: Store) -> None:
    # The store's validation (a taken collection id) answers 409 through the same handler.
    auth = {"Authorization": f"Bearer {store.token}"}
    taken = web.post("/api/v1/collections", json={"id": "colour-units", "title": "again"}, headers=auth)
    assert taken.status_code == 409
    assert taken.json() == {"detail": "a collection named 'colour-units' already exists", "reason": "collection-exists"}


def test_who_is_not_logged_in_is_sent_to_log_in_or_told_how(web: TestClient) -> None:
    csrf = parse(web.get("/login").text).one("input", name="csrf_token")["value"]  # the page sets the CSRF cookie
    form = web.post("/models/toy-rn/layer4/2/notes", data={"text": "hi", "csrf_token": csrf},
                    headers={"Referer": "/models/toy-rn/layer4/2"}, follow_redirects=False)
    assert form.status_code == 303 and form.headers["location"] == "/login?next=/models/toy-rn/layer4/2"
    api = web.post("/api/v1/models/toy-rn/layer4/2/notes", json={"text": "hi"})
    assert api.status_code == 401 and api.headers["www-authenticate"] == "Bearer"
    assert api.json()["reason"] == "token-required"


def test_rate_limit_says_when_to_come_back(store: Store) -> None:
    with TestClient(create_app(store.settings(live_rate_limit="1/minute"))) as client:
        # The limit is counted before the request is looked at: a refused model still counts.
        assert client.get("/api/v1/search/prompt", params={"text": "red", "model": "nope"}).status_code == 404
        refused = client.get("/api/v1/search/prompt", params={"text": "red", "model": "toy-rn"})
        assert refused.status_code == 429 and refused.json()["reason"] == "rate-limited"
        assert "1/minute" in refused.json()["detail"] and 1 <= int(refused.headers["retry-after"]) <= 60
        page = client.get("/search", params={"prompt": "red", "model": "toy-rn"})
        assert page.status_code == 429 and 1 <= int(page.headers["retry-after"]) <= 60
        assert _error_page(page)[:2] == ("Slow down", "rate-limited")


@pytest.fixture
def broken_model_client(app_settings: Settings, tmp_path: Path) -> Iterator[TestClient]:
    """A store with one model registered from a checkpoint file that is gone since."""
    record, layers = toy_model("gone-rn")
    record.update(source="checkpoint", pretrained_tag=None, checkpoint_path=str(tmp_path / "gone.pt"))
    engine = make_engine(app_settings.database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            repository.upsert_model(session, record, layers)
    finally:
        engine.dispose()
    with TestClient(create_app(app_settings)) as client:
        yield client


def test_a_model_that_cannot_load_is_503_with_retry_after(broken_model_client: TestClient) -> None:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, format="PNG")
    upload = {"file": ("red.png", out.getvalue(), "image/png")}
    api = broken_model_client.post("/api/v1/probe", data={"model": "gone-rn"}, files=upload)
    assert api.status_code == 503 and api.headers["retry-after"] == "30"
    assert api.json()["reason"] == "model-unavailable" and "gone.pt, which is gone" in api.json()["detail"]
    page = broken_model_client.post("/probe", data={"model": "gone-rn"}, files=upload)
    assert page.status_code == 503 and page.headers["retry-after"] == "30"
    assert _error_page(page)[:2] == ("Busy", "model-unavailable")
