"""Labels, notes and collections through the API and through the pages, and the tokens that
guard them: `microscope tokens` as a real process, hashes only in the store, Bearer for the
API, a login cookie plus a CSRF token for forms."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from store.session import make_engine
from tests.app.conftest import Store
from tests.app.html import parse


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def microscope(*args: str, database_url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    env["MICROSCOPE_DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, env=env, timeout=300)


def test_tokens_cli_stores_only_a_hash(tmp_path: Path) -> None:
    from store import migrations

    migrated_url = f"sqlite:///{tmp_path / 'tokens.db'}"  # the CLI is the same on both backends
    migrations.upgrade(migrated_url)
    created = microscope("tokens", "create", "ada", database_url=migrated_url)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("msk_") and len(token) > 40 and "shown only now" in created.stderr
    engine = make_engine(migrated_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, token_hash, prefix FROM api_tokens")).all()
        dump = "\n".join(str(r) for r in conn.execute(text("SELECT * FROM api_tokens")).all())
    engine.dispose()
    assert rows == [("ada", hashlib.sha256(token.encode()).hexdigest(), token[:12])]
    assert token not in dump
    listed = microscope("tokens", "list", database_url=migrated_url)
    assert listed.returncode == 0 and token[:12] in listed.stdout and "ada" in listed.stdout and "live" in listed.stdout
    assert token not in listed.stdout
    short = microscope("tokens", "revoke", "msk", database_url=migrated_url)
    assert short.returncode == 2 and "6 characters" in short.stderr
    revoked = microscope("tokens", "revoke", token[:10], database_url=migrated_url)
    assert revoked.returncode == 0, revoked.stderr
    from store import annotations
    from store.session import make_sessionmaker

    engine = make_engine(migrated_url)
    with make_sessionmaker(engine)() as session:
        assert annotations.verify_token(session, token) is None  # revoked
        assert [r.revoked_at is not None for r in annotations.list_tokens(session)] == [True]
    engine.dispose()


def test_writes_need_a_valid_token(web: TestClient, store: Store) -> None:
    url = "/api/v1/models/toy-rn/layer4/9/label"
    r = web.put(url, json={"text": "x"})
    assert r.status_code == 401 and r.json()["reason"] == "token-required" and r.headers["www-authenticate"] == "Bearer"
    assert web.put(url, json={"text": "x"}, headers=bearer("msk_not-a-real-token")).json()["reason"] == "invalid-token"
    assert web.put(url, json={"text": "x"}, headers={"Authorization": "Basic abc"}).status_code == 401
    assert web.put(url, json={"text": "x"}, headers={"Authorization": "Bearer"}).status_code == 401
    # A revoked token stops working.
    from store import annotations
    from store.session import make_sessionmaker

    engine = make_engine(store.database_url)
    with make_sessionmaker(engine)() as session:
        row, token = annotations.create_token(session, "temp")
        session.commit()
        assert web.put(url, json={"text": "ok"}, headers=bearer(token)).status_code == 200
        annotations.revoke_token(session, str(row.id))
        session.commit()
    engine.dispose()
    assert web.put(url, json={"text": "x"}, headers=bearer(token)).status_code == 401


def test_label_and_notes_through_the_api(web: TestClient, store: Store) -> None:
    auth = bearer(store.token)
    label = unique("label")
    r = web.put("/api/v1/models/toy-rn/layer4/10/label", json={"text": f"  {label}  "}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["label"] == label and r.json()["annotation"]["author"] == "tester"
    unit = web.get("/api/v1/models/toy-rn/layer4/10").json()
    assert unit["label"] == label and unit["annotations"][0]["kind"] == "label"
    # The new label is found by search and shown in the grid.
    found = web.get(f"/api/v1/search?q={label}").json()["results"]
    assert [(x["model"], x["layer"], x["index"], x["matched"]) for x in found] == [("toy-rn", "layer4", 10, "label")]
    grid = web.get("/api/v1/models/toy-rn/layer4?per_page=12").json()["units"]
    assert grid[10]["label"] == label
    assert web.put("/api/v1/models/toy-rn/layer4/10/label", json={"text": ""}, headers=auth).status_code == 422
    assert web.put("/api/v1/models/toy-rn/layer4/10/label", json={"text": "x" * 300}, headers=auth).status_code == 422
    assert web.put("/api/v1/models/toy-rn/layer4/10/label", json={"text": "a\x00b"}, headers=auth).json()["reason"] == "bad-label"
    assert web.put("/api/v1/models/toy-rn/layer4/9999/label", json={"text": "x"}, headers=auth).status_code == 404
    cleared = web.delete("/api/v1/models/toy-rn/layer4/10/label", headers=auth)
    assert cleared.status_code == 200 and web.get("/api/v1/models/toy-rn/layer4/10").json()["label"] is None

    note = web.post("/api/v1/models/toy-rn/layer4/10/notes", json={"text": "fires on red text"}, headers=auth)
    assert note.status_code == 201
    note_id = note.json()["id"]
    edited = web.patch(f"/api/v1/annotations/{note_id}", json={"text": "fires on red text and red shapes"}, headers=auth)
    assert edited.status_code == 200 and edited.json()["text"].endswith("red shapes")
    # Another token holder cannot edit or delete it.
    from store import annotations
    from store.session import make_sessionmaker

    engine = make_engine(store.database_url)
    with make_sessionmaker(engine)() as session:
        _, other = annotations.create_token(session, unique("other"))
        session.commit()
    engine.dispose()
    assert web.patch(f"/api/v1/annotations/{note_id}", json={"text": "mine now"}, headers=bearer(other)).status_code == 403
    assert web.delete(f"/api/v1/annotations/{note_id}", headers=bearer(other)).status_code == 403
    assert web.delete(f"/api/v1/annotations/{note_id}", headers=auth).json() == {"deleted": True}
    assert web.delete(f"/api/v1/annotations/{note_id}", headers=auth).status_code == 404


def test_collections_through_the_api(web: TestClient, store: Store) -> None:
    auth = bearer(store.token)
    cid = unique("family")
    created = web.post("/api/v1/collections", json={"id": cid, "title": "Shape units", "description": "d"}, headers=auth)
    assert created.status_code == 201 and created.json()["units"] == [] and created.json()["author"] == "tester"
    assert web.post("/api/v1/collections", json={"id": cid, "title": "again"}, headers=auth).status_code == 409
    assert web.post("/api/v1/collections", json={"id": "Bad Id!", "title": "t"}, headers=auth).status_code == 422
    for index in (3, 5, 3):  # adding twice keeps one
        r = web.post(f"/api/v1/collections/{cid}/units", json={"model": "toy-rn", "layer": "layer4", "index": index}, headers=auth)
        assert r.status_code == 200
    assert [u["index"] for u in r.json()["units"]] == [3, 5]
    vit_layer = store.populated.models["toy-vit"]["layer"]
    web.post(f"/api/v1/collections/{cid}/units", json={"model": "toy-vit", "layer": vit_layer, "index": 1, "note": "ViT twin"}, headers=auth)
    body = web.get(f"/api/v1/collections/{cid}").json()
    assert [(u["model"], u["index"], u["note"]) for u in body["units"]] == [("toy-rn", 3, ""), ("toy-rn", 5, ""), ("toy-vit", 1, "ViT twin")]
    assert cid in [c["id"] for c in web.get("/api/v1/models/toy-rn/layer4/5").json()["collections"]]
    assert web.post(f"/api/v1/collections/{cid}/units", json={"model": "toy-rn", "layer": "layer4", "index": 99999},
                    headers=auth).status_code == 404
    removed = web.delete(f"/api/v1/collections/{cid}/units/toy-rn/layer4/3", headers=auth)
    assert [u["index"] for u in removed.json()["units"]] == [5, 1]
    patched = web.patch(f"/api/v1/collections/{cid}", json={"title": "Shape family"}, headers=auth)
    assert patched.json()["title"] == "Shape family" and patched.json()["description"] == "d"
    assert web.delete(f"/api/v1/collections/{cid}", headers=auth).json() == {"deleted": True}
    assert web.get(f"/api/v1/collections/{cid}").status_code == 404
    assert web.get("/api/v1/models/toy-rn/layer4/5").status_code == 200  # the units stay


def login(client: TestClient, token: str) -> str:
    """Log in through the form; returns the CSRF token the pages embed afterwards."""
    page = client.get("/login?next=/models/toy-rn/layer4/11")
    form = parse(page.text).one("form", action="/login")
    csrf = form.one("input", name="csrf_token")["value"]
    r = client.post("/login", data={"token": token, "csrf_token": csrf, "next": "/models/toy-rn/layer4/11"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/models/toy-rn/layer4/11"
    cookie = r.headers.get_list("set-cookie")
    assert any("microscope_token=" in c and "HttpOnly" in c and "SameSite=strict" in c for c in cookie)
    unit_page = parse(client.get("/models/toy-rn/layer4/11").text)
    return unit_page.one("form", action="/models/toy-rn/layer4/11/label").one("input", name="csrf_token")["value"]


def test_label_note_and_collection_through_the_pages(web: TestClient, store: Store) -> None:
    # Logged out: no forms, a login link; a post is sent to the login page.
    page = parse(web.get("/models/toy-rn/layer4/11").text)
    assert page.find("form", action="/models/toy-rn/layer4/11/label") is None
    assert web.post("/models/toy-rn/layer4/11/label", data={"text": "x", "csrf_token": "x"}, follow_redirects=False).status_code == 403
    # A wrong token is refused on the login page itself.
    csrf = parse(web.get("/login").text).one("input", name="csrf_token")["value"]
    assert web.post("/login", data={"token": "msk_wrong", "csrf_token": csrf}).status_code == 401
    csrf = login(web, store.token)
    label = unique("page-label")
    r = web.post("/models/toy-rn/layer4/11/label", data={"text": label, "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/models/toy-rn/layer4/11")
    doc = parse(web.get(r.headers["location"]).text)
    assert doc.one(id="label").text() == label and doc.find("p", class_="saved") is not None
    assert web.get("/api/v1/models/toy-rn/layer4/11").json()["label"] == label
    # Without the CSRF token (e.g. a form on another site), nothing happens.
    forged = web.post("/models/toy-rn/layer4/11/label", data={"text": "forged"}, follow_redirects=False)
    assert forged.status_code == 403 and web.get("/api/v1/models/toy-rn/layer4/11").json()["label"] == label
    # Cookie-authenticated JSON writes need the CSRF header too.
    assert web.put("/api/v1/models/toy-rn/layer4/11/label", json={"text": "via cookie"}).status_code == 403
    ok = web.put("/api/v1/models/toy-rn/layer4/11/label", json={"text": label}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200
    # Notes: add, then delete through the form.
    r = web.post("/models/toy-rn/layer4/11/notes", data={"text": "a note from the page", "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    notes = [a for a in web.get("/api/v1/models/toy-rn/layer4/11").json()["annotations"] if a["kind"] == "note"]
    assert notes[0]["text"] == "a note from the page" and notes[0]["author"] == "tester"
    web.post(f"/annotations/{notes[0]['id']}/delete", data={"csrf_token": csrf, "next": "/models/toy-rn/layer4/11"})
    assert not [a for a in web.get("/api/v1/models/toy-rn/layer4/11").json()["annotations"] if a["kind"] == "note"]
    # Collections: create one from the unit page, then see it on its shareable page.
    cid = unique("from-page")
    r = web.post("/models/toy-rn/layer4/11/collections", data={"new_id": cid, "new_title": "From the page", "csrf_token": csrf},
                 follow_redirects=False)
    assert r.status_code == 303
    page = parse(web.get(f"/collections/{cid}").text)
    assert [int(a["data-unit"]) for a in page.one("div", id="members").find_all("a", data_unit=True)] == [11]
    web.post(f"/collections/{cid}/remove", data={"model": "toy-rn", "layer": "layer4", "index": "11", "csrf_token": csrf})
    assert web.get(f"/api/v1/collections/{cid}").json()["units"] == []
    # Log out: the cookie goes, and so do the forms.
    web.post("/logout", data={"csrf_token": csrf})
    assert parse(web.get("/models/toy-rn/layer4/11").text).find("form", action="/models/toy-rn/layer4/11/label") is None


def test_login_never_redirects_off_site(web: TestClient, store: Store) -> None:
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        csrf = parse(web.get("/login").text).one("form", action="/login").one("input", name="csrf_token")["value"]
        r = web.post("/login", data={"token": store.token, "csrf_token": csrf, "next": target}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/", target


@pytest.mark.parametrize("size", [64 * 1024 + 1, 200 * 1024])
def test_oversized_json_bodies_are_refused(web: TestClient, store: Store, size: int) -> None:
    r = web.put("/api/v1/models/toy-rn/layer4/1/label", content=b'{"text": "' + b"a" * size + b'"}',
                headers={**bearer(store.token), "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["reason"] == "body-too-large"
