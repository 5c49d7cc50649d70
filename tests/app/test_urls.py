"""The URL builder: the paths it makes, and that every link the app hands out (in its pages and
in their JSON twins) lives under the app's root path and answers, on SQLite and Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.server import create_app
from app.urls import Urls
from store.blobs import BlobStore
from tests.app.conftest import Store
from tests.app.html import parse

ROOT = "/lab"
VIT_LAYER = "transformer.resblocks.5.mlp"


def test_pages_and_their_json_twins() -> None:
    urls = Urls()
    assert urls.models() == "/" and urls.api.models() == "/api/v1/models"
    assert urls.model("toy-rn") == "/models/toy-rn" and urls.api.model("toy-rn") == "/api/v1/models/toy-rn"
    assert urls.layer("toy-vit", VIT_LAYER) == f"/models/toy-vit/{VIT_LAYER}"
    assert urls.unit("toy-rn", "layer4", 7) == "/models/toy-rn/layer4/7"
    assert urls.api.unit("toy-rn", "layer4", 7) == "/api/v1/models/toy-rn/layer4/7"
    assert urls.unit_links("toy-rn", "layer4", 7) == urls.api.unit_links("toy-rn", "layer4", 7) == {
        "url": "/models/toy-rn/layer4/7", "api_url": "/api/v1/models/toy-rn/layer4/7",
    }
    assert urls.layer_export("toy-rn", "layer4") == urls.api.layer_export("toy-rn", "layer4") == "/api/v1/models/toy-rn/layer4/export"
    assert urls.api.collection("colour-units") == "/api/v1/collections/colour-units"
    assert urls.search_prompt(text="red", model="toy-rn") == "/api/v1/search/prompt?text=red&model=toy-rn"
    # Pages reached only through forms or as HTML stay HTML from either side.
    assert urls.api.unit_label("toy-rn", "layer4", 7) == "/api/v1/models/toy-rn/layer4/7/label"
    assert urls.api.collection_edit("c") == "/collections/c/edit" and urls.api.annotation_delete(3) == "/annotations/3/delete"
    assert urls.api.home() == "/" and urls.api.login() == "/login" and urls.api.docs("probe") == "/docs#/probe"


def test_query_strings_leave_out_what_is_not_set() -> None:
    urls = Urls()
    assert urls.search(q="red fish", model="", layer=None) == "/search?q=red+fish"
    assert urls.layer("toy-rn", "layer4", sort="label", page=2) == "/models/toy-rn/layer4?sort=label&page=2"
    assert urls.api.jobs(state=None, model="toy-rn", kind="") == "/api/v1/jobs?model=toy-rn"
    assert urls.words(q="king - man & queen") == "/words?q=king+-+man+%26+queen"
    assert urls.login(next="/models/toy-rn/layer4/0") == "/login?next=/models/toy-rn/layer4/0"


def test_root_path_prefixes_every_url() -> None:
    urls = Urls("/lab/")  # a trailing slash is not doubled
    assert urls.home() == "/lab/" and urls.models() == "/lab/"
    assert urls.unit("toy-rn", "layer4", 0) == "/lab/models/toy-rn/layer4/0"
    assert urls.api.unit("toy-rn", "layer4", 0) == "/lab/api/v1/models/toy-rn/layer4/0"
    assert urls.api.collections(page=2) == "/lab/api/v1/collections?page=2"
    assert urls.static("style.css") == "/lab/static/style.css" and urls.openapi() == "/lab/api/v1/openapi.json"
    assert urls.api_docs_asset("swagger-ui.css") == "/lab/vendor/api-docs/swagger-ui.css"


def test_path_segments_are_escaped() -> None:
    # Names come from people (model ids, collection ids); one that holds a slash or a space
    # must stay one path segment.
    assert Urls().model("a/b c") == "/models/a%2Fb%20c"


def test_blob_urls_serve_the_blob(store: Store) -> None:
    uri = BlobStore(store.blob_url).put(b"\x89PNG a blob for the URL builder", suffix=".png")
    urls = Urls(ROOT)
    url = urls.blob(uri)
    assert url is not None and url.startswith(f"{ROOT}/blobs/") and url.endswith(".png")
    assert urls.blob(None) is None and urls.blob("") is None
    with TestClient(create_app(store.settings()), root_path=ROOT) as client:
        served = client.get(url)
    assert served.status_code == 200 and served.content == b"\x89PNG a blob for the URL builder"


# -- every link the app hands out, served under a root path ----------------------------------------
@pytest.fixture
def lab(store: Store) -> Iterator[TestClient]:
    """The app as a reverse proxy serves it under /lab (uvicorn --root-path /lab)."""
    with TestClient(create_app(store.settings()), root_path=ROOT) as client:
        yield client


def _links(html: str) -> tuple[set[str], set[str]]:
    """The page's GET links (anchors, stylesheets, images, GET forms) and its POST form actions."""
    doc = parse(html)
    get = {n["href"] for n in doc.find_all("a") if n.get("href")} | {n["href"] for n in doc.find_all("link") if n.get("href")}
    get |= {n["src"] for n in doc.find_all("img") if n.get("src") and not n["src"].startswith("data:")}
    forms = doc.find_all("form")
    get |= {f["action"] for f in forms if f.get("method", "get").lower() == "get"}
    post = {f["action"] for f in forms if f.get("method", "get").lower() == "post"}
    return get, post


def _json_urls(value: Any, key: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _json_urls(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _json_urls(v, key)
    elif isinstance(value, str) and key.endswith("url") and not value.startswith("data:"):
        yield value


START = [
    "/", "/?per_page=1", "/models/toy-rn", f"/models/toy-vit/{VIT_LAYER}", "/models/toy-rn/layer4?per_page=4&sort=label",
    "/models/toy-rn/layer4/0", "/models/toy-rn/layer4/3", f"/models/toy-vit/{VIT_LAYER}/5", "/search?q=red&per_page=2",
    "/words?q=red", "/collections?per_page=1", "/collections/colour-units", "/jobs?per_page=2", "/probe",
    "/models/no-such-model",
]


def test_every_link_lives_under_the_root_path_and_answers(lab: TestClient) -> None:
    seen: dict[str, int] = {}
    posts: set[str] = set()
    outside: set[str] = set()

    def check(url: str, source: str) -> None:
        if url.startswith("#"):
            return
        if not url.startswith(f"{ROOT}/"):
            outside.add(f"{url} (on {source})")
            return
        path = url.split("#", 1)[0]
        if path not in seen:
            seen[path] = lab.get(path).status_code

    for start in START:
        page = lab.get(ROOT + start)
        assert page.status_code in (200, 404), (start, page.text[:300])
        get, post = _links(page.text)
        posts |= {(p, start) for p in post}
        for url in get:
            check(url, start)
        api = lab.get(ROOT + "/api/v1" + (start if start != "/" else "/models" + start[1:]))
        if api.status_code == 200:
            for url in _json_urls(api.json()):
                check(url, f"{start} as JSON")
    assert not outside, sorted(outside)
    broken = {url: status for url, status in seen.items() if status >= 400}
    assert not broken, broken
    assert len(seen) > 100  # the crawl reached units, blobs, pages of listings and JSON twins
    for action, source in posts:
        assert action.startswith(f"{ROOT}/"), (action, source)
        # The route exists: refused for want of a login or a CSRF token, never 404 or 405.
        status = lab.post(action, follow_redirects=False).status_code
        assert status not in (404, 405), (action, source, status)


LISTINGS = [
    ("/?per_page=1", "/api/v1/models?per_page=1", "models", lambda item: item["id"]),
    ("/models/toy-rn/layer4?sort=label&per_page=200", "/api/v1/models/toy-rn/layer4?sort=label&per_page=200", "units",
     lambda item: item["index"]),
    ("/search?q=red&per_page=1", "/api/v1/search?q=red&per_page=1", "results",
     lambda item: (item["model"], item["layer"], item["index"])),
]


@pytest.mark.parametrize(("page_path", "api_path", "key", "identity"), LISTINGS, ids=["models", "units", "search"])
def test_pagination_links_walk_a_listing(lab: TestClient, page_path: str, api_path: str, key: str, identity: Any) -> None:
    """Next-page links lead, as pages and in the API, through every item exactly once."""
    pages, url = [], ROOT + page_path
    while url:
        page = lab.get(url)
        assert page.status_code == 200, url
        doc = parse(page.text)
        pages.append(url)
        nxt = doc.find_all("a", rel="next")
        url = nxt[0]["href"] if nxt else None
    items: list[Any] = []
    url = ROOT + api_path
    while url:
        body = lab.get(url).json()
        items += [identity(item) for item in body[key]]
        url = body["pagination"]["next_url"]
    assert len(items) == len(set(items)) == body["pagination"]["total"] >= 2
    assert len(pages) == body["pagination"]["pages"] >= 2
