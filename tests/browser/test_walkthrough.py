"""A researcher's walk through the site in a real browser (Chromium, JavaScript off), checked
against the store: from the index to a unit page of each toy model, a label added with a
token, the unit found again through search, and the other pages. Every page is saved as a
screenshot under test-artifacts/screenshots/ (CI keeps them as artifacts)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from store.models import Annotation, DatasetExample, Layer, Unit, WordActivation
from store.session import make_engine, make_sessionmaker
from tests.browser.conftest import FILLED_UNITS, Site, shot

# Building the site runs the real precompute jobs; on a busy machine that takes minutes.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(2400)]

MODELS = ["toy-rn", "toy-vit"]


def store_unit(site: Site, model_id: str, layer: str, index: int) -> dict[str, Any]:
    engine = make_engine(site.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            unit = session.execute(
                select(Unit).join(Layer).where(Layer.model_id == model_id, Layer.name == layer, Unit.index == index)
            ).scalar_one()
            tops = session.execute(
                select(func.count()).select_from(DatasetExample).where(DatasetExample.unit_id == unit.id, DatasetExample.sign == "top")
            ).scalar_one()
            words = list(session.execute(
                select(WordActivation.word).where(WordActivation.unit_id == unit.id).order_by(WordActivation.rank)
            ).scalars())
            labels = list(session.execute(
                select(Annotation.text, Annotation.author).where(Annotation.unit_id == unit.id, Annotation.kind == "label")
            ).all())
            return {"label": unit.label, "max": unit.max, "histogram": unit.histogram, "tops": tops, "words": words,
                    "labels": labels, "units": session.get(Layer, unit.layer_id).units}
    finally:
        engine.dispose()


def significant(value: float) -> str:
    return f"{value:.3g}"


def check_images_served(page: Any, site: Site, selector: str) -> int:
    """Every image the selector finds is served by the site as an image."""
    images = page.locator(selector)
    sources = [images.nth(i).get_attribute("src") for i in range(images.count())]
    for src in sources:
        r = site.http.get(src)
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/"), src
    return len(sources)


@pytest.mark.parametrize("model_id", MODELS)
def test_walk_from_the_index_to_a_unit(page: Any, site: Site, model_id: str) -> None:
    layer = site.layers[model_id]
    page.goto(site.url + "/")
    assert page.title().startswith("Models")
    shot(page, f"{model_id}-1-index")
    page.locator(f"tr[data-model-id='{model_id}'] td.model-id a").click()
    page.wait_for_url(f"**/models/{model_id}")
    shot(page, f"{model_id}-2-model")
    row = page.locator(f"#layers tr[data-layer='{layer}']")
    assert row.locator("span.cov[data-kind='examples']").get_attribute("data-count") == str(int(row.get_attribute("data-units")))
    row.locator("a").first.click()
    page.wait_for_url(f"**/models/{model_id}/{layer}")
    shot(page, f"{model_id}-3-layer")
    cards = page.locator("#units a.card")
    first = store_unit(site, model_id, layer, 0)
    assert cards.count() == min(48, first["units"])
    assert check_images_served(page, site, "#units img") == 48  # every card has a thumbnail (visualization or example)
    assert page.locator("#units a.card img.thumb:not(.example)").count() == FILLED_UNITS  # feature visualizations first
    cards.nth(0).click()
    page.wait_for_url(f"**/models/{model_id}/{layer}/0")
    shot(page, f"{model_id}-4-unit")

    # What the unit page shows is what the store holds.
    stats = page.locator("#stats dd[data-stat='max']").inner_text()
    assert float(stats.replace(",", "")) == pytest.approx(first["max"], rel=5e-3)
    shown_tops = page.locator("div.examples[data-sign='top'] figure")
    assert shown_tops.count() == first["tops"] > 0
    values = [float(shown_tops.nth(i).get_attribute("data-activation")) for i in range(shown_tops.count())]
    assert values == sorted(values, reverse=True)
    words = page.locator("section[data-section='words'] tr[data-word]")
    assert [words.nth(i).get_attribute("data-word") for i in range(words.count())] == first["words"]
    assert page.locator("#histogram svg .bars rect").count() == len(first["histogram"]["counts"])
    assert page.locator("section[data-section='buckets'] svg.strip image").count() > 0
    assert page.locator("section[data-section='decomposition'] tr[data-text]").count() > 0
    assert page.locator("section[data-section='nearest']").get_attribute("data-basis") == "direction"
    check_images_served(page, site, "section[data-section='featureviz'] img, div.examples img")
    # The JSON twin is linked and agrees.
    twin = site.http.get(page.locator("a.json-link").last.get_attribute("href")).json()
    assert twin["id"] == f"{model_id}/{layer}/0" and len(twin["examples"][0]["top"]) == first["tops"]
    # Next and previous.
    page.locator("a[rel='next']").first.click()
    page.wait_for_url(f"**/models/{model_id}/{layer}/1")
    assert page.locator("h1").inner_text().startswith("Unit 1")


@pytest.mark.parametrize("model_id", MODELS)
def test_label_with_a_token_then_find_it(page: Any, site: Site, model_id: str) -> None:
    layer = site.layers[model_id]
    index = 3
    unit_path = f"/models/{model_id}/{layer}/{index}"
    page.goto(site.url + unit_path)
    assert page.locator("form.label-form").count() == 0  # logged out: no forms
    page.locator("a", has_text="Log in with an API token").click()
    page.wait_for_url("**/login**")
    shot(page, f"{model_id}-5-login")
    page.fill("input[name='token']", site.token)
    page.locator("form[action='/login'] button[type='submit']").click()
    page.wait_for_url(f"**{unit_path}")
    label = f"{model_id} browser label {uuid.uuid4().hex[:6]}"
    page.fill("#label-text", label)
    page.locator("form.label-form button").click()
    page.wait_for_url(re.compile(rf".*{re.escape(unit_path)}\?saved=label$"))
    assert page.locator("#label").inner_text() == label
    shot(page, f"{model_id}-6-labelled")
    stored = store_unit(site, model_id, layer, index)
    assert stored["label"] == label and (label, "browser-tester") in stored["labels"]

    page.goto(site.url + "/search")
    page.fill("form[role='search'] input[name='q']", label.split()[-1])
    page.locator("form[role='search'] button").click()
    page.wait_for_url("**/search?q=**")
    shot(page, f"{model_id}-7-search")
    hit = page.locator(f"#results tr[data-model='{model_id}'][data-unit='{index}']")
    assert hit.count() == 1 and hit.get_attribute("data-matched") == "label"
    hit.locator("a").click()
    page.wait_for_url(f"**{unit_path}")
    assert page.locator("#label").inner_text() == label


def test_the_other_pages(page: Any, site: Site) -> None:
    # Words: nearest words over the image-based word embedding the words job wrote.
    page.goto(site.url + "/words")
    first_word = page.locator("main p.muted a").first
    word = first_word.inner_text()
    first_word.click()
    page.wait_for_url("**/words?q=**")
    rows = page.locator("#word-results tr[data-word]")
    assert rows.count() == 20 and word not in [rows.nth(i).get_attribute("data-word") for i in range(rows.count())]
    shot(page, "8-words")
    # Probe: pick a dataset image, see the units that fire and where.
    page.goto(site.url + "/probe?model=toy-vit")
    page.locator("button[data-position='2']").click()
    page.wait_for_selector("#probe-result")
    cards = page.locator("#probe-result a.card")
    assert cards.count() == 12 and cards.first.locator("svg.heatmap").count() == 1
    activations = [float(cards.nth(i).get_attribute("data-activation")) for i in range(12)]
    assert activations == sorted(activations, reverse=True)
    shot(page, "9-probe")
    # Probe with an upload through the form.
    page.goto(site.url + "/probe?model=toy-rn")
    png = site.http.get(page.locator("button[data-position='5'] img").get_attribute("src")).content
    page.set_input_files("#upload-form input[type='file']", files=[{"name": "mine.png", "mimeType": "image/png", "buffer": png}])
    page.locator("#upload-form button").click()
    page.wait_for_selector("#probe-result")
    assert "mine.png" in page.locator(".probe-input").inner_text()
    shot(page, "10-probe-upload")
    # Jobs: the precompute jobs that built this store, all done.
    page.goto(site.url + "/jobs")
    states = {page.locator("#jobs tr").nth(i).get_attribute("data-state") for i in range(1, page.locator("#jobs tr").count())}
    assert states == {"done"}
    shot(page, "11-jobs")
    # Collections: create one while logged in, from a unit page, and open its shareable page.
    page.goto(site.url + "/login")
    page.fill("input[name='token']", site.token)
    page.locator("form[action='/login'] button[type='submit']").click()
    page.goto(site.url + "/models/toy-rn/layer4/1")
    page.fill("input[name='new_id']", "browser-family")
    page.fill("input[name='new_title']", "Browser family")
    page.locator("form.collect-form button", has_text="Create and add").click()
    page.goto(site.url + "/collections")
    shot(page, "12-collections")
    page.locator("tr[data-collection='browser-family'] a").click()
    page.wait_for_url("**/collections/browser-family")
    assert page.locator("#members a.card").get_attribute("data-unit") == "1"
    shot(page, "13-collection")
