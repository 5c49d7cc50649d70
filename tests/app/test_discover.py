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
from fastapi.testclient import TestClient
from PIL import Image

from app.server import create_app
from app.settings import Settings
from tests.app.conftest import BACKENDS, _database
from tests.app.images import png
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


def post(client: TestClient, image: Image.Image | None | bool = None, path: str = "/api/v1/discover", **fields):
    data = {"model": MODEL, **{k: str(v) for k, v in fields.items()}}  # a "model" field overrides toy-vit
    files = {"file": ("circle.png", png(image or red_circle()), "image/png")} if image is not False else None
    return client.post(path, data=data, files=files)


def _active(known, effects) -> dict[tuple[str, int], float]:
    """(layer, unit) -> ||phi_n - b_n|| of the neurons above their thresholds, layer by layer."""
    out = {}
    for name, k in known.items():
        norms = np.linalg.norm(effects[name].numpy() - k.mean_effects, axis=1)
        for i in np.nonzero((norms > k.thresholds) & (k.thresholds > 0))[0]:
            out[(name, int(k.units[i]))] = float(norms[i])
    return out


def test_concepts_over_every_layer_segmentation_and_ablation_match_a_direct_computation(discover_web: TestClient) -> None:
    from precompute.discovery import Ablation, aligned_neurons, class_embedding, discover_concepts_over_layers, read, segment
    from precompute.zeroshot import class_features, label_set, probabilities
    from tests.discovery_world import LAYERS, knowledge, model

    loaded = model(MODEL)
    known = knowledge(MODEL)
    pixels = loaded.preprocess(red_circle())[None]
    reading = read(loaded, pixels, map_layers=list(known), effect_layers=list(known))
    effects = {name: value[0] for name, value in reading.effects.items()}

    # The default: every layer with directions and decompositions, their active neurons added up.
    r = post(discover_web, class_name="circle")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["layers"] == list(LAYERS[MODEL]) and body["layer"] == CONCEPT_LAYER and body["labels"] == "world-shapes"
    assert body["segmentation_layers"] == list(LAYERS[MODEL])
    concepts = body["before"]["concepts"]
    assert concepts["layers"] == list(LAYERS[MODEL])
    expected = discover_concepts_over_layers(list(known.values()), effects, top=10)
    assert [t["text"] for t in concepts["texts"]] == [text for text, _ in expected]
    for got, (_, score) in zip(concepts["texts"], expected):
        assert got["score"] == pytest.approx(score, rel=1e-3)
    active = _active(known, effects)
    assert concepts["active_count"] == len(active) and len({layer for layer, _ in active}) == 3
    assert {(a["layer"], a["unit"]) for a in concepts["active"]} == set(active)
    texts = list(next(iter(known.values())).texts)
    for got in concepts["texts"]:
        j = texts.index(got["text"])
        behind = sorted(((layer, unit) for (layer, unit) in active if known[layer].coefficients[unit, j] != 0),
                        key=lambda key: -abs(known[key[0]].coefficients[key[1], j] * active[key]))[:8]
        assert [(n["layer"], n["unit"]) for n in got["neurons"]] == behind
        for n in got["neurons"]:
            assert n["coefficient"] == pytest.approx(float(known[n["layer"]].coefficients[n["unit"], j]), abs=1e-5)
            assert n["contribution"] == pytest.approx(n["coefficient"] * active[(n["layer"], n["unit"])], abs=1e-4)
            assert n["url"].endswith(f"/models/{MODEL}/{n['layer']}/{n['unit']}") and n["ref"] == f"{n['layer']}:{n['unit']}"
    # Neurons of more than one layer stand behind the texts named.
    assert len({n["layer"] for t in concepts["texts"] for n in t["neurons"]}) >= 2

    neurons = aligned_neurons(list(known.values()), class_embedding(loaded, "circle"), 200)
    assert body["segmentation_neuron_count"] == 200
    assert [(n["layer"], n["unit"]) for n in body["segmentation_neurons"]] == [(l, u) for l, u, _ in neurons[:24]]
    seg = segment({l: reading.maps[l][0] for l in known}, neurons, (64, 64))
    assert body["before"]["segmentation"]["mask_fraction"] == pytest.approx(float(seg.mask.mean()), abs=1e-5)
    mask = np.asarray(Image.open(io.BytesIO(_data(body["before"]["segmentation"]["mask"])))) > 0
    assert np.array_equal(mask, seg.mask)

    # Units of two layers silenced in one pass: resblocks.3's eight most active neurons by
    # reference, the top text's neurons of the last concept layer by bare index (as older clients
    # name them).
    early = sorted([a["unit"] for a in concepts["active"] if a["layer"] == LAYERS[MODEL][0]][:8])
    late = sorted({n["unit"] for n in concepts["texts"][0]["neurons"] if n["layer"] == CONCEPT_LAYER} | {3})
    ablate = ",".join([f"{LAYERS[MODEL][0]}:{u}" for u in early] + [str(u) for u in late])
    r = post(discover_web, class_name="circle", ablate=ablate)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ablation"]["groups"] == [{"layer": LAYERS[MODEL][0], "units": early}, {"layer": CONCEPT_LAYER, "units": late}]
    assert body["ablation"]["layer"] == LAYERS[MODEL][0] and body["ablation"]["units"] == early
    assert body["ablation"]["refs"] == [f"{LAYERS[MODEL][0]}:{u}" for u in early] + [f"{CONCEPT_LAYER}:{u}" for u in late]
    assert [u["ref"] for u in body["ablation"]["units_info"]] == body["ablation"]["refs"]
    shapes = label_set("world-shapes")
    classes = class_features(loaded, shapes)

    def direct(ablations) -> tuple[dict[str, float], list[tuple[str, float]]]:
        quiet = read(loaded, pixels, effect_layers=list(known), ablations=ablations)
        probs = probabilities(loaded, quiet.embeddings, classes)[0]
        texts = discover_concepts_over_layers(list(known.values()), {k: v[0] for k, v in quiet.effects.items()}, top=10)
        return {name: float(p) for name, p in zip(shapes.names, probs)}, texts

    both, both_texts = direct([Ablation(LAYERS[MODEL][0], tuple(early)), Ablation(CONCEPT_LAYER, tuple(late))])
    got = {c["label"]: c["probability"] for c in body["after"]["prediction"]}
    assert got == pytest.approx({label: both[label] for label in got}, abs=1e-5)  # the answer rounds to 5 places
    got_texts = [(t["text"], t["score"]) for t in body["after"]["concepts"]["texts"]]
    assert [t for t, _ in got_texts] == [t for t, _ in both_texts]
    assert [v for _, v in got_texts] == pytest.approx([v for _, v in both_texts], rel=1e-3)
    # Either layer's units alone give other concepts: the one pass silenced both.
    for alone in ([Ablation(LAYERS[MODEL][0], tuple(early))], [Ablation(CONCEPT_LAYER, tuple(late))]):
        _, texts = direct(alone)
        assert [t for t, _ in texts] != [t for t, _ in both_texts] or max(
            abs(a - b) / b for (_, a), (_, b) in zip(texts, both_texts)) > 0.01
    assert body["after"]["segmentation"] is not None and body["after"]["concepts"]["layers"] == list(LAYERS[MODEL])


def test_one_concept_layer_as_before(discover_web: TestClient) -> None:
    """`layer` alone names the one concept layer, and bare ablation indices are its units."""
    from precompute.discovery import Ablation, discover_concepts, read
    from precompute.zeroshot import class_features, label_set, probabilities
    from tests.discovery_world import knowledge, model

    r = post(discover_web, layer=CONCEPT_LAYER, class_name="circle", ablate="3,17")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["layer"] == CONCEPT_LAYER and body["layers"] == [CONCEPT_LAYER]
    loaded = model(MODEL)
    known = knowledge(MODEL)
    pixels = loaded.preprocess(red_circle())[None]
    reading = read(loaded, pixels, effect_layers=[CONCEPT_LAYER])
    # The store holds the decompositions' terms; the dense matrix rebuilt from them is the fixture's own.
    expected = discover_concepts(known[CONCEPT_LAYER], reading.effects[CONCEPT_LAYER][0])
    concepts = body["before"]["concepts"]
    assert concepts["layer"] == CONCEPT_LAYER and concepts["active_count"] == len(expected.active)
    assert [t["text"] for t in concepts["texts"]] == [c.text for c in expected.concepts]
    for got, want in zip(concepts["texts"], expected.concepts):
        assert got["score"] == pytest.approx(want.score, rel=1e-3)
        assert [(n["layer"], n["unit"]) for n in got["neurons"]] == [(CONCEPT_LAYER, n["unit"]) for n in want.neurons]
    shapes = label_set("world-shapes")
    quiet = read(loaded, pixels, ablations=[Ablation(CONCEPT_LAYER, (3, 17))])
    probs = probabilities(loaded, quiet.embeddings, class_features(loaded, shapes))[0]
    assert body["ablation"]["layer"] == CONCEPT_LAYER and body["ablation"]["units"] == [3, 17]
    assert body["ablation"]["groups"] == [{"layer": CONCEPT_LAYER, "units": [3, 17]}] and body["ablation"]["mode"] == "zero"
    assert body["after"]["prediction"][0]["label"] == shapes.names[int(probs.argmax())]
    assert body["after"]["prediction"][0]["probability"] == pytest.approx(float(probs.max()), abs=1e-4)
    assert body["rerun"]["layers"] == CONCEPT_LAYER and body["rerun"]["layer"] == CONCEPT_LAYER


def test_chosen_concept_layers(discover_web: TestClient) -> None:
    from tests.discovery_world import LAYERS

    first, middle, last = LAYERS[MODEL]
    comma = post(discover_web, layers=f"{last}, {first}").json()
    assert comma["layers"] == [first, last] and comma["layer"] == last
    assert {a["layer"] for a in comma["before"]["concepts"]["active"]} <= {first, last}
    assert {n["layer"] for t in comma["before"]["concepts"]["texts"] for n in t["neurons"]} <= {first, last}
    # One field per layer (checkboxes) names the same set; `layer` joins `layers`.
    repeated = discover_web.post("/api/v1/discover", data={"model": MODEL, "layers": [first, last]},
                                 files={"file": ("circle.png", png(red_circle()), "image/png")}).json()
    assert repeated["layers"] == [first, last] and repeated["before"]["concepts"] == comma["before"]["concepts"]
    union = post(discover_web, layer=middle, layers=first).json()
    assert union["layers"] == [first, middle]
    # The rerun names the layers, so a re-run (an ablation) keeps them.
    again = discover_web.post("/api/v1/discover", data={k: v for k, v in comma["rerun"].items() if v is not None}).json()
    assert again["layers"] == [first, last] and again["before"]["concepts"] == comma["before"]["concepts"]


def _data(url: str) -> bytes:
    import base64

    return base64.b64decode(url.split(",", 1)[1])


def test_mean_ablation_uses_the_stored_unit_means(discover_web: TestClient) -> None:
    from precompute.discovery import Ablation, read
    from precompute.zeroshot import class_features, label_set, probabilities
    from tests.discovery_world import model

    r = post(discover_web, ablate="5", ablate_mode="mean")
    assert r.status_code == 200, r.text
    assert r.json()["ablation"]["mode"] == "mean" and r.json()["before"]["segmentation"] is None
    # Across layers: each unit set to its stored mean (the store's fixture: 0.01 * (index % 7)).
    early = "transformer.resblocks.3.mlp"
    r = post(discover_web, ablate=f"{early}:5,{early}:40,{CONCEPT_LAYER}:6", ablate_mode="mean")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ablation"]["groups"] == [{"layer": early, "units": [5, 40]}, {"layer": CONCEPT_LAYER, "units": [6]}]
    loaded = model(MODEL)
    shapes = label_set("world-shapes")
    quiet = read(loaded, loaded.preprocess(red_circle())[None], ablations=[
        Ablation(early, (5, 40), "mean", (0.05, 0.05)), Ablation(CONCEPT_LAYER, (6,), "mean", (0.06,))])
    probs = probabilities(loaded, quiet.embeddings, class_features(loaded, shapes))[0]
    got = {c["label"]: c["probability"] for c in body["after"]["prediction"]}
    assert got == pytest.approx({name: float(p) for name, p in zip(shapes.names, probs) if name in got}, abs=1e-4)


def _concept_rows(doc, table: str = "concepts") -> list[tuple[str, list[str]]]:
    """(text, the neurons' layer:index) of each row of a concepts table on the page."""
    rows = doc.one("table", id=table).one("tbody").find_all("tr")
    return [(row["data-text"], [a["data-ref"] for a in row.find_all("a", class_="unit-link")]) for row in rows]


def _layer_boxes(doc) -> list[tuple[str, bool]]:
    return [(b["value"], "checked" in b.attrs) for b in doc.one("form", id="discover-form").find_all("input", name="layers")]


def test_the_page_shows_what_the_json_says(discover_web: TestClient) -> None:
    from tests.app.html import parse
    from tests.discovery_world import LAYERS

    page = discover_web.get(f"/discover?model={MODEL}")
    assert page.status_code == 200 and 'id="discover-form"' in page.text
    assert _layer_boxes(parse(page.text)) == [(name, True) for name in LAYERS[MODEL]]
    options = discover_web.get(f"/api/v1/discover?model={MODEL}").json()
    assert options["concept_layers"] == options["layers"] == list(LAYERS[MODEL])
    body = post(discover_web, class_name="circle").json()
    html = post(discover_web, path="/discover", class_name="circle").text
    doc = parse(html)
    assert _concept_rows(doc) == [(t["text"], [n["ref"] for n in t["neurons"]]) for t in body["before"]["concepts"]["texts"]]
    assert body["before"]["segmentation"]["mask"] in html
    assert f'data-active="{body["before"]["concepts"]["active_count"]}"' in html
    assert doc.one("section", id="discover-result")["data-layers"] == ",".join(body["layers"])
    prefilled = doc.one("form", id="ablate-form").one("input", name="ablate")["value"]
    assert prefilled == ", ".join(n["ref"] for n in body["before"]["concepts"]["texts"][0]["neurons"])

    # Two layers chosen, units of two layers silenced: the page and its twin agree.
    first, middle, last = LAYERS[MODEL]
    fields = {"class_name": "circle", "layers": f"{first},{last}", "ablate": f"{first}:17, {last}:3, {last}:40"}
    body = post(discover_web, **fields).json()
    doc = parse(post(discover_web, path="/discover", **fields).text)
    assert body["layers"] == [first, last] and body["ablation"]["refs"] == [f"{first}:17", f"{last}:3", f"{last}:40"]
    assert doc.one("section", id="ablation-result")["data-refs"] == ",".join(body["ablation"]["refs"])
    assert _concept_rows(doc, "concepts-after") == [(t["text"], [n["ref"] for n in t["neurons"]])
                                                    for t in body["after"]["concepts"]["texts"]]
    after = [(row["data-label"], float(row["data-probability"])) for row in doc.one("table", id="prediction-after").find_all("tr", data_label=True)]
    assert after == [(c["label"], c["probability"]) for c in body["after"]["prediction"]]
    assert _layer_boxes(doc) == [(first, True), (middle, False), (last, True)]


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
    ({"layers": "transformer.resblocks.3.mlp,nope"}, None, 404, "unknown-layer"),
    ({"layers": "transformer.resblocks.3.mlp,transformer.resblocks.0.mlp"}, None, 422, "no-directions"),
    ({"ablate": "transformer.resblocks.3.mlp:512"}, None, 422, "unknown-unit"),
    ({"ablate": "transformer.resblocks.3.mlp:-2"}, None, 422, "unknown-unit"),
    ({"ablate": "transformer.resblocks.3.mlp:1,transformer.resblocks.9.mlp:1"}, None, 404, "unknown-layer"),
    ({"ablate": "transformer.resblocks.3.mlp:x"}, None, 422, "bad-ablation"),
    ({"ablate": "transformer.resblocks.3.mlp:"}, None, 422, "bad-ablation"),
    ({"ablate": ":17"}, None, 422, "bad-ablation"),
    ({"ablate": "3.5"}, None, 422, "bad-ablation"),
    ({"ablate": "transformer.resblocks.3.mlp:1_0"}, None, 422, "bad-ablation"),
    ({"ablate": ",".join([str(u) for u in range(511)] + ["transformer.resblocks.3.mlp:1", "transformer.resblocks.4.mlp:1"])},
     None, 422, "bad-ablation"),  # 513 units in all
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


def test_the_openapi_document_describes_concept_layers_and_unit_refs(discover_web: TestClient) -> None:
    import schemathesis

    spec = discover_web.get("/api/v1/openapi.json").json()
    operations = [result.ok() for result in schemathesis.openapi.from_dict(spec).get_all_operations()]  # ok(): each one loads
    assert {(op.method.upper(), op.path) for op in operations} >= {("GET", "/api/v1/discover"), ("POST", "/api/v1/discover")}
    schemas = spec["components"]["schemas"]
    body = spec["paths"]["/api/v1/discover"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    fields = schemas[body.rsplit("/", 1)[-1]]["properties"]
    assert {"layer", "layers", "ablate", "ablate_layer"} <= set(fields)
    assert fields["layers"]["anyOf"][0]["type"] == "array"
    assert {p["name"] for p in spec["paths"]["/api/v1/discover"]["get"]["parameters"]} >= {"layer", "layers"}
    assert {"layers"} <= set(schemas["DiscoverResultOut"]["properties"]) and {"layers"} <= set(schemas["ConceptsOut"]["properties"])
    assert {"groups", "refs"} <= set(schemas["AblationOut"]["properties"]) and "ref" in schemas["UnitRef"]["properties"]
    # The fields an older client reads keep their types.
    assert schemas["DiscoverResultOut"]["properties"]["layer"]["type"] == "string"
    assert schemas["AblationOut"]["properties"]["layer"]["type"] == "string"
