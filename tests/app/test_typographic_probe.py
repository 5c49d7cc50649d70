"""The typographic probe through the API: before/after against a direct computation, the listed
units with the store's knowledge, silencing, and bad input refused with reasons."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.app.conftest import Store
from tests.app.images import png


def circle() -> Image.Image:
    from precompute.world import object_image

    return object_image("circle", "blue", 1, np.random.default_rng([22, 1])).image


def post(client: TestClient, image: Image.Image | None = None, **fields):
    data = {"model": "toy-rn", "text": "square", **{k: str(v) for k, v in fields.items()}}
    files = {"file": ("circle.png", png(image or circle()), "image/png")} if image is not False else None
    return client.post("/api/v1/probe/typographic", data=data, files=files)


def test_attack_matches_a_direct_computation(live_web: TestClient, live_store: Store) -> None:
    from precompute.typographic import changed_units, encode_with_layer, render_attack
    from precompute.zeroshot import classify, label_set
    from store.loading import load_registered
    from store.session import make_engine, make_sessionmaker

    r = post(live_web, top_units=6)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["layer"] == "layer4" and body["labels"]["id"] == "world-shapes" and body["labels"]["classes"] == 6
    assert body["attack"]["setup"] == "fixed" and len(body["attack"]["placements"]) == 1
    assert 0.02 < body["attack"]["pixel_cover"] < 0.12
    assert body["input"]["attacked_view"].startswith("data:image/png;base64,")

    engine = make_engine(live_store.database_url)
    with make_sessionmaker(engine)() as session:
        loaded = load_registered(session, "toy-rn")
    engine.dispose()
    shapes = label_set("world-shapes")
    attacked = render_attack(circle(), "square")
    assert body["attack"]["pixel_cover"] == pytest.approx(attacked.pixel_cover, abs=1e-5)
    probs = classify(loaded, [circle(), attacked.image], shapes)
    assert [c["label"] for c in body["before"]] == [shapes.names[int(i)] for i in probs[0].argsort(descending=True)[:5]]
    assert [c["label"] for c in body["after"]] == [shapes.names[int(i)] for i in probs[1].argsort(descending=True)[:5]]
    assert body["before"][0]["probability"] == pytest.approx(float(probs[0].max()), abs=1e-4)
    pixels = torch.stack([loaded.preprocess(circle()), loaded.preprocess(attacked.image)])
    _, values = encode_with_layer(loaded, pixels, "layer4")
    listed = changed_units(values[0], values[1], 6)
    assert [u["index"] for u in body["units"]] == listed
    for u in body["units"]:
        assert u["before"] == pytest.approx(float(values[0, u["index"]]), abs=1e-3)
        assert u["after"] == pytest.approx(float(values[1, u["index"]]), abs=1e-3)
        assert u["url"].endswith(f"/models/toy-rn/layer4/{u['index']}")
    assert body["silenced"] is None and body["rerun"]["silence"] == "listed"

    again = post(live_web, top_units=6, silence="listed")  # the one-click re-run, by its form fields
    silenced = again.json()["silenced"]
    assert silenced["units"] == listed
    _, quiet = None, None
    from precompute.zeroshot import probabilities, class_features

    features, _ = encode_with_layer(loaded, pixels, "layer4", silence=listed)
    quiet = probabilities(loaded, features, class_features(loaded, shapes))
    assert silenced["after"][0]["label"] == shapes.names[int(quiet[1].argmax())]

    rerun = {k: str(v) for k, v in body["rerun"].items() if v is not None}
    by_ref = live_web.post("/api/v1/probe/typographic", data=rerun)
    assert by_ref.status_code == 200, by_ref.text
    assert by_ref.json()["silenced"]["units"] == listed and by_ref.json()["input"]["source"] == "upload"


def test_units_carry_the_stores_thumbnails_and_decompositions(live_store: Store) -> None:
    """The page builder gives each listed unit what the store holds: thumbnail, label, decomposition."""
    from app.pages.common import unit_thumbnails
    from app.pages.typographic import typographic_result
    from app.urls import Urls
    from store import queries
    from store.session import make_engine, make_sessionmaker

    layer = live_store.populated.models["toy-rn"]["layer"]
    live = {"units": [{"unit": u, "before": 0.0, "after": 1.0, "change": 1.0} for u in range(6)],
            "before": [{"label": "circle", "index": 0, "probability": 0.9}], "after": [{"label": "square", "index": 1, "probability": 0.8}],
            "input_png": b"", "attacked_png": b"", "silenced": None}
    engine = make_engine(live_store.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            page = typographic_result(session, Urls(), model_id="toy-rn", layer_name=layer, live=live, source={"source": "upload"},
                                      attack={}, labels={}, rerun={})
            rows = queries.unit_ids_by_index(session, queries.layer_row(session, "toy-rn", layer)["id"], range(6))
            thumbs = unit_thumbnails(session, Urls(), [r["id"] for r in rows.values()])
            terms = {u: queries.decomposition_of(session, rows[u]["id"]) for u in rows}
    finally:
        engine.dispose()
    assert any(thumbs) and any(terms.values())  # the sample store holds some of both for these units
    for unit in page["units"]:
        row = rows[unit["index"]]
        assert unit["thumbnail_url"] == thumbs.get(row["id"], {}).get("thumbnail_url")
        assert [t["text"] for t in unit["decomposition"]] == [t["text"] for t in terms[unit["index"]][:3]]
        assert unit["label"] == row["label"]
    assert page["top_changed"] is True


def test_user_labels_and_custom_placement(live_web: TestClient) -> None:
    r = post(live_web, custom_labels="circle, square, heart", setup="custom", x=0.3, y=0.7, size=0.25, color="red",
             rotation=20)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["labels"]["custom"] and body["labels"]["names"] == ["circle", "square", "heart"]
    assert body["attack"]["placements"] == [{"x": 0.3, "y": 0.7, "size": 0.25, "color": "red", "outline": "#000000", "rotation": 20.0}]
    assert {c["label"] for c in body["before"]} == {"circle", "square", "heart"}


@pytest.mark.parametrize(
    "fields,status,reason",
    [
        ({"text": ""}, 422, "empty-text"),
        ({"text": "x" * 65}, 422, "text-too-long"),
        ({"custom_labels": "cat"}, 422, "too-few-labels"),
        ({"model": "no-such-model"}, 404, "unknown-model"),
        ({"setup": "custom", "x": 1.5}, 422, "position-outside-image"),
        ({"setup": "custom", "y": -0.2}, 422, "position-outside-image"),
        ({"labels": "nope"}, 422, "unknown-label-set"),
        ({"custom_labels": "circle, zeppelin"}, 422, "unknown-words"),
        ({"silence": "a,b"}, 422, "bad-silence"),
        ({"layer": "layer9"}, 404, "unknown-layer"),
        ({"upload_ref": "0" * 64, "_no_file": 1}, 410, "upload-expired"),
    ],
)
def test_bad_input_gets_a_reason(live_web: TestClient, fields, status, reason) -> None:
    fields = dict(fields)
    image = False if fields.pop("_no_file", None) else None
    r = post(live_web, image, **fields)
    assert r.status_code == status, r.text
    assert r.json()["reason"] == reason and r.json()["detail"]
