"""/discover in a real browser (no JavaScript): upload a picture, see its concepts and a
segmentation mask, silence the neurons behind the top concept with one click, follow a neuron's
link, and the JSON twin giving what the page shows."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.browser.conftest import _require_browser, shot
from tests.discover_store import MODEL, prepare_discover_store
from tests.server import served


@pytest.fixture(scope="module")
def discover_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _require_browser()
    from store import migrations

    folder = tmp_path_factory.mktemp("discover-site")
    data_dir = folder / "data"
    data_dir.mkdir()
    url = f"sqlite:///{data_dir / 'microscope.db'}"
    migrations.upgrade(url)
    prepare_discover_store(url, data_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    env.update(MICROSCOPE_DATA_DIR=str(data_dir), MICROSCOPE_DEVICE="cpu", MICROSCOPE_LIVE_RATE_LIMIT="10000/minute")
    with served(env, folder / "server.log") as base:
        yield base


def square_png() -> bytes:
    from precompute.world import object_image

    out = io.BytesIO()
    object_image("square", "blue", 1, np.random.default_rng([41, 5])).image.save(out, format="PNG")
    return out.getvalue()


def test_discover_in_the_browser(discover_site: str, page) -> None:
    png = square_png()
    page.goto(discover_site + f"/discover?model={MODEL}")
    page.fill("#discover-form input[name='class_name']", "square")
    page.set_input_files("#discover-form input[type='file']", files=[{"name": "square.png", "mimeType": "image/png", "buffer": png}])
    page.locator("#discover-form button[type='submit']").click()
    page.wait_for_selector("#discover-result")
    rows = page.locator("#concepts tbody tr")
    texts = [rows.nth(i).get_attribute("data-text") for i in range(rows.count())]
    assert 1 <= len(texts) <= 10
    assert page.locator("#segmentation-before img.mask").count() == 1
    fraction = float(page.locator("#segmentation-before").get_attribute("data-mask-fraction"))
    assert 0 < fraction < 1
    shot(page, "discover-1-concepts")

    with httpx.Client(base_url=discover_site, timeout=60) as http:
        twin = http.post("/api/v1/discover", data={"model": MODEL, "class_name": "square"},
                         files={"file": ("square.png", png, "image/png")}).json()
    assert [t["text"] for t in twin["before"]["concepts"]["texts"]] == texts
    assert twin["before"]["segmentation"]["mask_fraction"] == fraction
    assert page.locator("#segmentation-before img.mask").get_attribute("src") == twin["before"]["segmentation"]["mask"]

    # One click silences the neurons behind the top concept and runs the same picture again.
    behind = [n["unit"] for n in twin["before"]["concepts"]["texts"][0]["neurons"]]
    page.locator("#ablate-form button").click()
    page.wait_for_selector("#ablation-result")
    assert page.locator("#ablation-result").get_attribute("data-units") == ",".join(map(str, sorted(behind)))
    assert page.locator("#prediction-after tbody tr").count() == 5
    assert page.locator("#segmentation-after img.mask").count() == 1
    shot(page, "discover-2-ablation")

    # A neuron behind a concept links to its unit page.
    link = page.locator("#concepts a.unit-link").first
    unit = link.get_attribute("data-unit")
    link.click()
    page.wait_for_url(f"**/models/{MODEL}/transformer.resblocks.5.mlp/{unit}")
