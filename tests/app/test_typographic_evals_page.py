"""The typographic evaluation page (Figure 16) and its JSON twin, on both backends: rows as the
store holds them, most successful first; re-writing the same rows replaces them."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.server import create_app
from store import repository
from store import typographic as results
from tests.app.html import parse
from tests.conftest import toy_model

ROWS = [
    {"kind": "attack", "text": "square", "target": "square", "success": 0.86, "pixel_cover": 0.0868, "images": 50, "setup": "fixed"},
    {"kind": "attack", "text": "star", "target": "star", "success": 0.02, "pixel_cover": 0.051, "images": 50, "setup": "fixed"},
    {"kind": "search", "text": "love", "target": "heart", "success": 0.79, "pixel_cover": 0.057, "images": 50, "setup": "fixed"},
    {"kind": "search", "text": "nothing", "target": "circle", "success": None, "pixel_cover": 0.05, "images": 0, "setup": "fixed"},
]


def test_page_and_twin_show_the_stored_table(session, app_settings) -> None:
    record, layers = toy_model("toy-rn")
    repository.upsert_model(session, record, layers)
    repository.upsert_dataset(session, "held-out", "folder", "folder", 60)
    results.replace_results(session, "toy-rn", "held-out", "world-shapes", ROWS)
    results.replace_results(session, "toy-rn", "held-out", "world-shapes", ROWS[:1])  # a re-run replaces, never doubles
    session.commit()
    assert len(results.results(session, "toy-rn", "held-out", "world-shapes")) == 4

    with TestClient(create_app(app_settings)) as client:
        twin = client.get("/api/v1/typographic").json()
        assert [r["text"] for r in twin["attacks"]] == ["square", "star"]
        assert [r["text"] for r in twin["search"]] == ["love", "nothing"]
        assert twin["attacks"][0]["names_target"] and not twin["search"][0]["names_target"]
        page = parse(client.get("/typographic?model=toy-rn&dataset=held-out&labels=world-shapes").text)
        for table in ("attacks", "search"):
            shown = [(tr.get("data-text"), tr.get("data-target")) for tr in page.one("table", id=table).find_all("tr", data_text=True)]
            assert shown == [(r["text"], r["target"]) for r in twin[table]]
        assert client.get("/api/v1/typographic?labels=imagenet").status_code == 404
