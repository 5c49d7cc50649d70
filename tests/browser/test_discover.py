"""/discover in a real browser (no JavaScript): choose two of toy-vit's concept layers, upload a
picture, see its concepts and a segmentation mask, silence units of two layers on the same
picture, follow a neuron's link, and the JSON twin giving what the page shows."""

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


def _rows(page, table: str) -> list[tuple[str, list[str]]]:
    """(text, the neurons' layer:index) of each row of a concepts table."""
    rows = page.locator(f"#{table} tbody tr")
    out = []
    for i in range(rows.count()):
        row = rows.nth(i)
        links = row.locator("a.unit-link")
        out.append((row.get_attribute("data-text"), [links.nth(j).get_attribute("data-ref") for j in range(links.count())]))
    return out


def test_discover_in_the_browser(discover_site: str, page) -> None:
    png = square_png()
    page.goto(discover_site + f"/discover?model={MODEL}")
    boxes = page.locator("#discover-form input[name='layers']")
    layers = [boxes.nth(i).get_attribute("value") for i in range(boxes.count())]
    assert layers == [f"transformer.resblocks.{b}.mlp" for b in (3, 4, 5)]
    assert all(boxes.nth(i).is_checked() for i in range(boxes.count()))  # every layer by default
    first, middle, last = layers
    page.uncheck(f"#discover-form input[name='layers'][value='{middle}']")  # two of the three
    page.fill("#discover-form input[name='class_name']", "square")
    page.set_input_files("#discover-form input[type='file']", files=[{"name": "square.png", "mimeType": "image/png", "buffer": png}])
    page.locator("#discover-form button[type='submit']").click()
    page.wait_for_selector("#discover-result")
    assert page.locator("#discover-result").get_attribute("data-layers") == f"{first},{last}"
    rows = _rows(page, "concepts")
    assert 1 <= len(rows) <= 10
    assert {ref.rpartition(":")[0] for _, refs in rows for ref in refs} <= {first, last}
    assert page.locator("#segmentation-before img.mask").count() == 1
    fraction = float(page.locator("#segmentation-before").get_attribute("data-mask-fraction"))
    assert 0 < fraction < 1
    shot(page, "discover-1-concepts")

    def twin(**fields) -> dict:
        with httpx.Client(base_url=discover_site, timeout=60) as http:
            r = http.post("/api/v1/discover", data={"model": MODEL, "class_name": "square", "layers": f"{first},{last}", **fields},
                          files={"file": ("square.png", png, "image/png")})
        assert r.status_code == 200, r.text
        return r.json()

    before = twin()
    assert [(t["text"], [n["ref"] for n in t["neurons"]]) for t in before["before"]["concepts"]["texts"]] == rows
    assert before["before"]["segmentation"]["mask_fraction"] == fraction
    assert page.locator("#segmentation-before img.mask").get_attribute("src") == before["before"]["segmentation"]["mask"]

    # Silence units of two layers on the same picture: the first layer's three most active
    # neurons and the neurons of the last layer behind the top text, typed as layer:index.
    active = before["before"]["concepts"]["active"]
    chosen = [a["ref"] for a in active if a["layer"] == first][:3]
    chosen += [n["ref"] for n in before["before"]["concepts"]["texts"][0]["neurons"] if n["layer"] == last]
    assert len(chosen) > 3
    page.fill("#ablate-form input[name='ablate']", ", ".join(chosen))
    page.locator("#ablate-form button[type='submit']").click()
    page.wait_for_selector("#ablation-result")
    order = {name: i for i, name in enumerate(layers)}
    refs = sorted(chosen, key=lambda r: (order[r.rpartition(":")[0]], int(r.rpartition(":")[2])))
    assert page.locator("#ablation-result").get_attribute("data-refs") == ",".join(refs)
    assert page.locator("#prediction-after tbody tr").count() == 5
    assert page.locator("#segmentation-after img.mask").count() == 1
    after = twin(ablate=",".join(chosen))
    assert after["ablation"]["refs"] == refs and [g["layer"] for g in after["ablation"]["groups"]] == [first, last]
    cells = page.locator("#prediction-after tbody tr")
    assert [(cells.nth(i).get_attribute("data-label"), float(cells.nth(i).get_attribute("data-probability")))
            for i in range(cells.count())] == [(c["label"], c["probability"]) for c in after["after"]["prediction"]]
    assert _rows(page, "concepts-after") == [(t["text"], [n["ref"] for n in t["neurons"]])
                                             for t in after["after"]["concepts"]["texts"]]
    shot(page, "discover-2-ablation")

    # A neuron behind a concept links to its unit page, in its own layer.
    link = page.locator("#concepts a.unit-link").first
    layer, unit = link.get_attribute("data-layer"), link.get_attribute("data-unit")
    assert layer in (first, last)
    link.click()
    page.wait_for_url(f"**/models/{MODEL}/{layer}/{unit}")
