"""A real site for the browser tests: a store built with the `microscope` command as a user
builds it (register the toy models, register a synthetic dataset, run the precompute jobs),
then served by uvicorn in its own process on a free port, and Debian's Chromium to drive it.

What the precompute jobs cannot make yet (feature visualizations, second-order directions and
decompositions come in later issues) is added to the first units through the store, shaped as
those jobs will write it, so every part of the unit page is exercised.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.server import served

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM = os.environ.get("MICROSCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
DATASET = "world"
FILLED_UNITS = 8  # units of each final layer that also get visualizations, directions, decompositions


@dataclass
class Site:
    url: str
    token: str
    database_url: str
    blob_url: str
    layers: dict[str, str]  # model id -> final layer name
    http: httpx.Client  # for fetching what pages link to (images, JSON twins)


def _microscope(env: dict[str, str], *args: str, timeout: float = 900) -> str:
    result = subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, env=env, timeout=timeout,
                            cwd=REPO)
    assert result.returncode == 0, f"microscope {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    return result.stdout


def _missing(message: str) -> None:
    # Under CI a skip would hide a broken pipeline: the browser tests must run there.
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: the browser tests must run there, so this fails instead of skipping)")
    pytest.skip(message)


def _require_browser() -> None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        _missing("playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        _missing(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    _require_browser()
    from precompute.toy import embedded_checkpoint
    from precompute.world import WORDS
    from tests.sample_store import add_results

    folder = tmp_path_factory.mktemp("site")
    data_dir = folder / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    env.update(MICROSCOPE_DATA_DIR=str(data_dir), MICROSCOPE_DEVICE="cpu")
    database_url = f"sqlite:///{data_dir / 'microscope.db'}"
    blob_url = str(data_dir / "blobs")

    _microscope(env, "db", "upgrade")
    layers = {"toy-rn": "layer4", "toy-vit": "transformer.resblocks.5.mlp"}
    for model_id in layers:
        source = "--embedded" if embedded_checkpoint(model_id).is_file() else "--random"
        _microscope(env, "models", "register", model_id, "--arch", model_id, source)
    _microscope(env, "datasets", "register", DATASET, "--synthetic", "64")
    word_file = folder / "words.txt"
    word_file.write_text("\n".join(sorted(set(WORDS))[:160]) + "\n")
    for model_id, layer in layers.items():
        _microscope(env, "precompute", "examples", "--model", model_id, "--layer", layer, "--dataset", DATASET, "--k", "6",
                    "--buckets", "5", "--per-bucket", "2", "--hist-bins", "32", "--batch-size", "32", "--quiet")
        _microscope(env, "precompute", "words", "--model", model_id, "--layer", layer, "--word-file", str(word_file),
                    "--top", "8", "--batch-size", "32", "--quiet")
        add_results(database_url, blob_url, model_id, layer, units=FILLED_UNITS)
    token = _microscope(env, "tokens", "create", "browser-tester").strip()

    with served(env, folder / "server.log") as url, httpx.Client(base_url=url, timeout=30) as http:
        yield Site(url, token, database_url, blob_url, layers, http)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    # One Playwright for the whole run: a second sync_playwright() in the same thread, while
    # this one lives, refuses to start.
    _require_browser()
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    # A laptop screen, and no JavaScript at all: everything must work without it.
    context = browser.new_context(viewport={"width": 1366, "height": 768}, java_script_enabled=False)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def shot(page: object, name: str) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
