"""/discover and POST /api/v1/discover on a real store (toy-vit with directions and decompositions
computed from world pictures), on SQLite and on Postgres: concepts, segmentation and ablation
against a direct computation, the page showing what the JSON says, and bad input refused with
reasons."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.server import create_app
from app.settings import Settings
from tests.app.conftest import BACKENDS, _database
from tests.discover_store import MODEL, prepare_discover_store

CONCEPT_LAYER = "transformer.resblocks.5.mlp"
RESNET = "toy-rn"


@pytest.fixture(scope="module", params=BACKENDS)
def discover_web(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The discover store on each backend, with toy-rn registered too (no directions: a ResNet
    to refuse ViT-only options on)."""
    from store import migrations
    from tests.discovery_world import model
    from tests.workers.precompute_helpers import register_random

    folder = tmp_path_factory.mktemp(f"discover-{request.param}")
    url, drop = _database(request.param, folder)
    try:
        migrations.upgrade(url)
        prepare_discover_store(url, folder)
        register_random(url, RESNET, RESNET, model(RESNET))
        settings = Settings(database_url=url, blob_url=str(folder / "blobs"), data_dir=Path(folder / "data"),
                            device="cpu", live_rate_limit="10000/minute")
        with TestClient(create_app(settings)) as client:
            yield client
    finally:
        if drop:
            drop()


def red_circle() -> Image.Image:
    from precompute.world import object_image

    return object_image("circle", "red", 1, np.random.default_rng([31, 2])).image


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def post(client: TestClient, image: Image.Image | None | bool = None, path: str = "/api/v1/discover", **fields):
    data = {"model": MODEL, **{k: str(v) for k, v in fields.items()}}  # a "model" field overrides toy-vit
    files = {"file": ("circle.png", png(image or red_circle()), "image/png")} if image is not False else None
    return client.post(path, data=data, files=files)


def test_concepts_segmentation_and_ablation_match_a_direct_computation(discover_web: TestClient) -> None:
    from precompute.discovery import Ablation, aligned_neurons, class_embedding, discover_concepts, read, segment
    from tests.discovery_world import knowledge, model

    r = post(discover_web, class_name="circle", ablate="3,17")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["layer"] == CONCEPT_LAYER and body["labels"] == "world-shapes"
    assert body["segmentation_layers"] == ["transformer.resblocks.3.mlp", "transformer.resblocks.4.mlp", CONCEPT_LAYER]

    loaded = model(MODEL)
    known = knowledge(MODEL)
    pixels = loaded.preprocess(red_circle())[None]
    reading = read(loaded, pixels, map_layers=list(known), effect_layers=[CONCEPT_LAYER])
    # The store holds the decompositions' terms; the dense matrix rebuilt from them is the fixture's own.
    expected = discover_concepts(known[CONCEPT_LAYER], reading.effects[CONCEPT_LAYER][0])
    concepts = body["before"]["concepts"]
    assert concepts["active_count"] == len(expected.active)
    assert [t["text"] for t in concepts["texts"]] == [c.text for c in expected.concepts]
    for got, want in zip(concepts["texts"], expected.concepts):
        assert got["score"] == pytest.approx(want.score, rel=1e-3)
        assert [n["unit"] for n in got["neurons"]] == [n["unit"] for n in want.neurons]
        for n in got["neurons"]:
            assert n["url"].endswith(f"/models/{MODEL}/{CONCEPT_LAYER}/{n['unit']}")

    neurons = aligned_neurons(list(known.values()), class_embedding(loaded, "circle"), 200)
    assert body["segmentation_neuron_count"] == 200
    assert [(n["layer"], n["unit"]) for n in body["segmentation_neurons"]] == [(l, u) for l, u, _ in neurons[:24]]
    seg = segment({l: reading.maps[l][0] for l in known}, neurons, (64, 64))
    assert body["before"]["segmentation"]["mask_fraction"] == pytest.approx(float(seg.mask.mean()), abs=1e-5)
    mask = np.asarray(Image.open(io.BytesIO(_data(body["before"]["segmentation"]["mask"])))) > 0
    assert np.array_equal(mask, seg.mask)

    # the ablation: zero units 3 and 17 of the concept layer, the prediction read again
    from precompute.zeroshot import class_features, label_set, probabilities

    shapes = label_set("world-shapes")
    quiet = read(loaded, pixels, ablations=[Ablation(CONCEPT_LAYER, (3, 17))])
    probs = probabilities(loaded, quiet.embeddings, class_features(loaded, shapes))[0]
    assert body["ablation"]["units"] == [3, 17] and body["ablation"]["mode"] == "zero"
    assert body["after"]["prediction"][0]["label"] == shapes.names[int(probs.argmax())]
    assert body["after"]["prediction"][0]["probability"] == pytest.approx(float(probs.max()), abs=1e-4)


def _data(url: str) -> bytes:
    import base64

    return base64.b64decode(url.split(",", 1)[1])


def test_mean_ablation_uses_the_stored_unit_means(discover_web: TestClient) -> None:
    r = post(discover_web, ablate="5", ablate_mode="mean")
    assert r.status_code == 200, r.text
    assert r.json()["ablation"]["mode"] == "mean" and r.json()["before"]["segmentation"] is None


def test_the_page_shows_what_the_json_says(discover_web: TestClient) -> None:
    page = discover_web.get("/discover")
    assert page.status_code == 200 and 'id="discover-form"' in page.text
    body = post(discover_web, class_name="circle").json()
    html = post(discover_web, path="/discover", class_name="circle").text
    shown = re.findall(r'<tr data-text="([^"]+)"', html)
    assert shown == [t["text"] for t in body["before"]["concepts"]["texts"]]
    assert body["before"]["segmentation"]["mask"] in html
    assert f'data-active="{body["before"]["concepts"]["active_count"]}"' in html
    assert 'id="ablate-form"' in html


def test_dataset_image_and_upload_ref(discover_web: TestClient) -> None:
    r = discover_web.post("/api/v1/discover", data={"model": MODEL, "dataset": "world", "position": "2"})
    assert r.status_code == 200, r.text
    assert r.json()["input"]["source"] == "dataset"
    first = post(discover_web).json()
    again = discover_web.post("/api/v1/discover", data={"model": MODEL, "upload_ref": first["rerun"]["upload_ref"]})
    assert again.status_code == 200
    assert again.json()["before"]["concepts"] == first["before"]["concepts"]


@pytest.mark.parametrize("fields,image,status,reason", [
    ({}, False, 400, "no-image"),
    ({"class_name": "   "}, None, 422, "empty-class-name"),
    ({"class_name": "circle", "seg_layers": "layer4"}, None, 422, "no-directions"),
    ({"ablate": "512"}, None, 422, "unknown-unit"),
    ({"ablate": "1,x"}, None, 422, "bad-ablation"),
    ({"ablate": "1", "ablate_mode": "half"}, None, 422, "bad-ablation-mode"),
    ({"layer": "transformer.resblocks.0.mlp"}, None, 422, "no-directions"),
    ({"layer": "nope"}, None, 404, "unknown-layer"),
    ({"seg_layers": "vit-late"}, None, 422, "no-class-name"),
    ({"class_name": ""}, None, 422, "empty-class-name"),
    ({"model": RESNET, "class_name": "circle", "seg_layers": "vit-late"}, None, 422, "layer-set-needs-vit"),
    ({"ablate": "-1"}, None, 422, "unknown-unit"),
    ({"ablate": "3", "ablate_layer": "transformer.resblocks.4.mlp.nope"}, None, 404, "unknown-layer"),
])
def test_bad_input_is_refused_with_a_reason(discover_web: TestClient, fields, image, status, reason) -> None:
    r = post(discover_web, image, **fields)
    assert r.status_code == status, r.text
    assert r.json()["reason"] == reason


def test_a_vit_only_layer_set_on_a_resnet_is_refused() -> None:
    from precompute.discovery import segmentation_layers
    from precompute.errors import Problem

    with pytest.raises(Problem) as caught:
        segmentation_layers("resnet", 0, ["layer4"], "vit-late")
    assert caught.value.status == 422 and caught.value.reason == "layer-set-needs-vit"
    assert segmentation_layers("resnet", 0, ["layer4"], None) == ["layer4"]
    assert segmentation_layers("vit", 12, [f"transformer.resblocks.{i}.mlp" for i in range(6, 11)], None) == [
        "transformer.resblocks.8.mlp", "transformer.resblocks.9.mlp", "transformer.resblocks.10.mlp"]


def test_cues_page_and_api_find_a_working_word(discover_web: TestClient) -> None:
    r = discover_web.post("/api/v1/cues", data={"model": MODEL, "source": "cross", "target": "square", "top": "5"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["verified_on"] == 24 and len(body["cues"]) == 5
    assert all(c["text"] not in ("square", "cross") and c["similarity_to_target"] <= 0.8 for c in body["cues"])
    assert body["working"], body["cues"]  # some found word moves >= 30 % of the cross pictures to square
    html = discover_web.post("/cues", data={"model": MODEL, "source": "cross", "target": "square", "top": "5"}).text
    assert re.findall(r'<tr data-text="([^"]+)"', html) == [c["text"] for c in body["cues"]]
    assert f'data-working="{",".join(body["working"])}"' in html
    bad = discover_web.post("/api/v1/cues", data={"model": MODEL, "source": "", "target": "square"})
    assert bad.status_code == 422 and bad.json()["reason"] == "empty-class-name"
