"""Unit pages are reused while nothing they show has changed: a repeat view reads one row (the
unit, the jobs' results generation and the store's edit stamp), and every kind of edit made
through one server process shows on the next view in another process that had the page cached.
Both processes here are apps on the same database, as two `microscope serve` workers are."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.server import create_app
from store.models import EditStamp
from store.session import make_engine, make_sessionmaker
from tests.app.conftest import Store
from tests.app.html import parse
from tests.app.test_thumbnails import counting_statements

UNIT = "/models/toy-rn/layer4/8"  # a unit the sample store leaves unlabelled, that no other test writes to
API_UNIT = "/api/v1" + UNIT


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def other(store: Store) -> Iterator[TestClient]:
    """A second server process on the same store, with caches of its own."""
    with TestClient(create_app(store.settings())) as client:
        yield client


def _edits(store: Store) -> int:
    engine = make_engine(store.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return session.scalar(select(EditStamp.edits).where(EditStamp.id == 1))
    finally:
        engine.dispose()


@pytest.mark.parametrize("path", [UNIT, API_UNIT])
def test_a_repeat_view_sends_one_statement(web: TestClient, path: str) -> None:
    first = web.get(path)
    assert first.status_code == 200
    with counting_statements() as statements:
        again = web.get(path)
    assert again.status_code == 200 and again.content == first.content
    assert len(statements) == 1, statements


def _shown(client: TestClient) -> tuple[dict, str]:
    unit = client.get(API_UNIT).json()
    return unit, client.get(UNIT).text


def test_every_edit_reaches_a_process_that_cached_the_page(web: TestClient, other: TestClient, store: Store) -> None:
    auth = bearer(store.token)
    before, page = _shown(other)  # the other process caches both twins
    stamp = _edits(store)
    label = f"label-{uuid.uuid4().hex[:8]}"

    assert web.put(f"{API_UNIT}/label", json={"text": label}, headers=auth).status_code == 200
    unit, page = _shown(other)
    assert unit["label"] == label and parse(page).one(id="label").text() == label

    note = web.post(f"{API_UNIT}/notes", json={"text": f"note {label}"}, headers=auth).json()
    unit, page = _shown(other)
    assert [a["text"] for a in unit["annotations"] if a["kind"] == "note"][0] == f"note {label}" and f"note {label}" in page
    web.patch(f"/api/v1/annotations/{note['id']}", json={"text": f"edited {label}"}, headers=auth)
    unit, page = _shown(other)
    assert f"edited {label}" in page and f"edited {label}" in str(unit["annotations"])
    web.delete(f"/api/v1/annotations/{note['id']}", headers=auth)
    unit, page = _shown(other)
    assert f"edited {label}" not in page and f"edited {label}" not in str(unit["annotations"])

    cid = f"family-{uuid.uuid4().hex[:8]}"
    web.post("/api/v1/collections", json={"id": cid, "title": f"Family {label}"}, headers=auth)
    web.post(f"/api/v1/collections/{cid}/units", json={"model": "toy-rn", "layer": "layer4", "index": 8}, headers=auth)
    unit, page = _shown(other)
    assert cid in [c["id"] for c in unit["collections"]] and f"Family {label}" in page
    web.patch(f"/api/v1/collections/{cid}", json={"title": f"Renamed {label}"}, headers=auth)
    unit, page = _shown(other)
    assert f"Renamed {label}" in page and f"Family {label}" not in page
    web.delete(f"/api/v1/collections/{cid}/units/toy-rn/layer4/8", headers=auth)
    unit, page = _shown(other)
    assert cid not in [c["id"] for c in unit["collections"]] and f"Renamed {label}" not in page
    web.post(f"/api/v1/collections/{cid}/units", json={"model": "toy-rn", "layer": "layer4", "index": 8}, headers=auth)
    web.delete(f"/api/v1/collections/{cid}", headers=auth)
    unit, page = _shown(other)
    assert cid not in [c["id"] for c in unit["collections"]]

    assert web.delete(f"{API_UNIT}/label", headers=auth).status_code == 200
    unit, page = _shown(other)
    shown = parse(page).find(id="label")
    assert unit["label"] is None and (shown is None or shown.text() != label)
    # Each write above counted once: label, note, edit, delete, collection, add, rename,
    # remove, add, delete, clear.
    assert _edits(store) == stamp + 11
    assert {k: unit[k] for k in ("stats", "examples", "words", "featureviz")} == \
        {k: before[k] for k in ("stats", "examples", "words", "featureviz")}  # the jobs' part is as it was


def test_a_neighbours_new_label_reaches_the_strip(web: TestClient, other: TestClient, store: Store) -> None:
    """The nearest-units strip names its units' labels: a neighbour's relabel is an edit too."""
    unlabelled = [u["index"] for u in other.get(API_UNIT).json()["nearest"]["units"] if u["label"] is None]
    neighbour = unlabelled[-1]  # the sample store gives every unit neighbours, most of them unlabelled
    label = f"neighbour-{uuid.uuid4().hex[:8]}"
    assert web.put(f"/api/v1/models/toy-rn/layer4/{neighbour}/label", json={"text": label},
                   headers=bearer(store.token)).status_code == 200
    try:
        labels = {u["index"]: u["label"] for u in other.get(API_UNIT).json()["nearest"]["units"]}
        assert labels[neighbour] == label and label in other.get(UNIT).text
    finally:
        web.delete(f"/api/v1/models/toy-rn/layer4/{neighbour}/label", headers=bearer(store.token))
