"""The typographic probe in a real browser (no JavaScript): upload, attack, both tables, the unit
link, the one-click silencing, and the JSON twin giving what the page shows."""

from __future__ import annotations

import io

import numpy as np

from tests.browser.conftest import Site, shot


def circle_png() -> bytes:
    from precompute.world import object_image

    out = io.BytesIO()
    object_image("circle", "green", 1, np.random.default_rng([22, 3])).image.save(out, format="PNG")
    return out.getvalue()


def table(page, selector: str) -> list[tuple[str, float]]:
    rows = page.locator(f"{selector} tbody tr")
    return [(rows.nth(i).get_attribute("data-label"), float(rows.nth(i).get_attribute("data-probability")))
            for i in range(rows.count())]


def test_typographic_probe_in_the_browser(site: Site, page) -> None:
    png = circle_png()
    page.goto(site.url + "/probe/typographic?model=toy-rn")
    page.fill("#attack-form input[name='text']", "square")
    page.set_input_files("#attack-form input[type='file']", files=[{"name": "circle.png", "mimeType": "image/png", "buffer": png}])
    page.locator("#attack-form button[type='submit']").click()
    page.wait_for_selector("#attack-result")
    before, after = table(page, "#classes-before"), table(page, "#classes-after")
    assert len(before) == len(after) == 5
    assert before[0][0] == "circle" and after[0][0] == "square"  # toy-rn reads the word
    units = page.locator("#attack-units tbody tr")
    assert units.count() == 8
    shown = [int(units.nth(i).get_attribute("data-unit")) for i in range(8)]
    shot(page, "typographic-1-attack")

    # The JSON twin of the same request says the same.
    twin = site.http.post("/api/v1/probe/typographic", data={"model": "toy-rn", "text": "square"},
                          files={"file": ("circle.png", png, "image/png")}).json()
    assert [(c["label"], c["probability"]) for c in twin["before"]] == before
    assert [(c["label"], c["probability"]) for c in twin["after"]] == after
    assert [u["index"] for u in twin["units"]] == shown
    assert float(page.locator("#pixel-cover").get_attribute("data-value")) == twin["attack"]["pixel_cover"]

    # One click silences the listed units and re-runs the same attack on the same upload.
    page.locator("#silence-form button").click()
    page.wait_for_selector("#silenced-result")
    assert page.locator("#silenced-result h3").inner_text().startswith("With units ")
    assert len(table(page, "#silenced-after")) == 5
    shot(page, "typographic-2-silenced")

    # A listed unit's link opens its page.
    first = page.locator("#attack-units a.unit-link").first
    first.click()
    page.wait_for_url(f"**/models/toy-rn/layer4/{shown[0]}")
    assert str(shown[0]) in page.locator("h1").inner_text()
