"""The API docs in a real browser (Chromium, JavaScript on): Swagger UI at /docs and ReDoc at
/redoc render our OpenAPI document from the server's own assets, with nothing fetched from
another host, as on a user's machine without internet.

These pages are JavaScript apps, so the walkthrough's `page` (JavaScript off) would only ever
show an empty body; and they need no store, so the server here runs on an empty data folder
instead of the walkthrough's populated site.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, _require_browser, shot
from tests.server import served

pytestmark = pytest.mark.browser
# On a busy machine ReDoc takes most of a minute to lay out the whole API.
RENDER_MS = 120_000

OPERATION = "/api/v1/models/{model_id}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _require_browser()
    folder = tmp_path_factory.mktemp("api-docs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    env.update(MICROSCOPE_DATA_DIR=str(folder / "data"), MICROSCOPE_DEVICE="cpu")
    with served(env, folder / "server.log", ready="/api/v1/openapi.json") as url:
        yield url


@pytest.fixture
def page(server: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_context(viewport={"width": 1366, "height": 768}).new_page()
            page.set_default_timeout(RENDER_MS)  # loading a 1.5 MB script counts too
            yield page
        finally:
            chromium.close()


def record(page: Any) -> tuple[list[str], list[str], list[str]]:
    """The URLs the page requests, those that fail, and the errors its scripts raise or log."""
    requests: list[str] = []
    failed: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    # A failed load is logged without its URL; `failed` says which one it was.
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None)
    return requests, failed, errors


def elsewhere(requests: list[str], server: str) -> list[str]:
    host = urlsplit(server).netloc
    # blob: URLs are made in the page itself (ReDoc's web worker) and carry the page's origin.
    return [u for u in requests if urlsplit(u.removeprefix("blob:")).netloc != host and not u.startswith("data:")]


def test_swagger_ui_renders_offline(page: Any, server: str) -> None:
    requests, failed, errors = record(page)
    page.goto(server + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=RENDER_MS)
    paths = [p.replace("\u200b", "") for p in page.locator(".opblock-summary-path").all_inner_texts()]
    assert OPERATION in paths
    assert server + "/api/v1/openapi.json" in requests
    assert not elsewhere(requests, server), requests
    assert not failed and not errors, (failed, errors)
    shot(page, "api-docs-swagger")


def test_redoc_renders_offline(page: Any, server: str) -> None:
    requests, failed, errors = record(page)
    page.goto(server + "/redoc")
    page.get_by_text(OPERATION, exact=True).first.wait_for(timeout=RENDER_MS)
    assert server + "/api/v1/openapi.json" in requests
    # ReDoc's "API docs by Redocly" footer asks Redocly's CDN for its logo and hides the image
    # when that fails; everything the docs need comes from the server.
    logo = {"https://cdn.redoc.ly/redoc/logo-mini.svg"}
    assert set(elsewhere(requests, server)) <= logo and set(failed) <= logo, requests
    assert not errors, errors
    shot(page, "api-docs-redoc")
