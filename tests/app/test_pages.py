"""Every page against its JSON twin, on a populated store, on SQLite and Postgres.

Each test fetches a page, finds the JSON twin it links to (<link rel=alternate>), fetches that,
and checks that what the page shows (its data-* attributes and visible text) is what the JSON
says; then checks the JSON against the store's contents where the sample data makes them known.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Store
from tests.app.html import Node, json_twin, parse
from tests.sample_store import DATASET, LABELS


def page_and_twin(client: TestClient, path: str) -> tuple[Node, dict]:
    page = client.get(path)
    assert page.status_code == 200, (path, page.text[:500])
    assert page.headers["content-type"].startswith("text/html")
    doc = parse(page.text)
    twin_url = json_twin(doc)
    # The twin is linked visibly too (header and footer), not only in <head>.
    assert any(a.get("href") == twin_url for a in doc.find_all("a")), f"{path} does not link {twin_url}"
    twin = client.get(twin_url)
    assert twin.status_code == 200 and twin.headers["content-type"].startswith("application/json"), twin_url
    return doc, twin.json()


def floats(values: list) -> list[float]:
    return [round(float(v), 6) for v in values]


def test_index_shows_models_layers_and_coverage(web: TestClient, store: Store) -> None:
    doc, twin = page_and_twin(web, "/")
    assert {m["id"] for m in twin["models"]} == {"toy-rn", "toy-vit"}
    assert twin["pagination"]["total"] == 2
    for model in twin["models"]:
        row = doc.one("tr", data_model_id=model["id"])
        assert int(row["data-units"]) == model["unit_count"]
        shown = {c["data-kind"]: int(c["data-count"]) for c in row.find_all("span", data_kind=True)}
        assert shown == {k: v for k, v in model["computed"].items() if k in shown}
        final = store.populated.models[model["id"]]["layer"]
        layer = next(l for l in model["layers"] if l["name"] == final)
        assert layer["computed"]["featureviz"] == layer["computed"]["examples"] == store.populated.models[model["id"]]["units"]
        assert layer["computed"]["labels"] == len(LABELS)
        section = doc.one("section", data_model=model["id"])
        assert [a["data-layer"] for a in section.find_all("a", data_layer=True)] == [l["name"] for l in model["layers"]]


def test_model_page_lists_layers_with_progress(web: TestClient, store: Store) -> None:
    doc, twin = page_and_twin(web, "/models/toy-rn")
    assert [r["data-layer"] for r in doc.find_all("tr", data_layer=True)] == [l["name"] for l in twin["layers"]]
    final = next(l for l in twin["layers"] if l["name"] == "layer4")
    jobs = {j["kind"]: j for j in final["jobs"]}
    assert jobs["examples"]["progress"] == 1.0 and jobs["words"]["progress"] == 0.0
    assert jobs["featureviz"]["shards"] == {"running": 1}
    row = doc.one("tr", data_layer="layer4")
    assert {s["data-kind"]: float(s["data-progress"]) for s in row.find_all("span", data_kind=True, data_progress=True)} == {
        k: j["progress"] for k, j in jobs.items()
    }
    partial = next(l for l in twin["layers"] if l["name"] == "layer3")
    assert partial["computed"]["statistics"] == 12 and partial["computed"]["featureviz"] == 0


@pytest.mark.parametrize("sort", ["index", "label", "activation"])
def test_layer_grid_matches_json(web: TestClient, sort: str) -> None:
    doc, twin = page_and_twin(web, f"/models/toy-rn/layer4?sort={sort}")
    cards = doc.one("div", id="units").find_all("a", data_unit=True)
    assert [int(c["data-unit"]) for c in cards] == [u["index"] for u in twin["units"]]
    for card, unit in zip(cards, twin["units"]):
        img = card.find("img")
        assert (img["src"] if img else None) == unit["thumbnail_url"]
        if img:
            assert img["loading"] == "lazy"
        text = card.text()
        if unit["label"]:
            assert unit["label"] in text
        elif unit["top_words"]:
            assert ", ".join(unit["top_words"]) in text
    indices = [u["index"] for u in twin["units"]]
    if sort == "index":
        assert indices == list(range(48))
    elif sort == "label":
        labelled = [u for u in twin["units"] if u["label"]]
        assert [u["label"] for u in labelled] == sorted(LABELS.values(), key=str.lower)
        assert twin["units"][: len(labelled)] == labelled
    else:
        maxima = [u["max"] for u in twin["units"] if u["max"] is not None]
        assert maxima == sorted(maxima, reverse=True) and len(maxima) == 12
        assert twin["units"][: len(maxima)] == [u for u in twin["units"] if u["max"] is not None]


def test_layer_pagination(web: TestClient) -> None:
    first = web.get("/api/v1/models/toy-rn/layer4?per_page=5").json()
    assert [u["index"] for u in first["units"]] == [0, 1, 2, 3, 4]
    p = first["pagination"]
    assert p["total"] == 768 and p["pages"] == 154 and p["prev_url"] is None
    second = web.get(p["next_url"]).json()
    assert [u["index"] for u in second["units"]] == [5, 6, 7, 8, 9]
    assert web.get(second["pagination"]["prev_url"]).json()["units"] == first["units"]
    last = web.get("/api/v1/models/toy-rn/layer4?per_page=5&page=154").json()
    assert [u["index"] for u in last["units"]] == [765, 766, 767] and last["pagination"]["next_url"] is None
    assert web.get("/api/v1/models/toy-rn/layer4?page=999").json()["units"] == []
    assert web.get("/api/v1/models/toy-rn/layer4?per_page=500").status_code == 422
    assert web.get("/models/toy-rn/layer4?per_page=500").status_code == 422
    html = parse(web.get("/models/toy-rn/layer4?per_page=5&page=2").text)
    assert html.one("a", rel="next")["href"] == second["pagination"]["next_page_url"]


def test_unit_page_matches_json_and_store(web: TestClient, store: Store) -> None:
    doc, twin = page_and_twin(web, "/models/toy-rn/layer4/0")
    assert twin["id"] == "toy-rn/layer4/0" and twin["label"] == LABELS[0]
    assert doc.one(id="label").text() == LABELS[0]
    assert twin["missing"] == []
    # Feature visualizations: the main image, diversity and facets.
    main = doc.one("section", data_section="featureviz").find_all("img")
    assert [i["src"] for i in main] == [f["image_url"] for f in twin["featureviz"]["main"]]
    variants = doc.one("section", data_section="featureviz-variants")
    assert [f["data-variant"] for f in variants.find_all("figure", data_kind="diversity")] == ["0", "1", "2", "3"]
    assert {f["data-variant"] for f in variants.find_all("figure", data_kind="facet")} == {"text", "colour"}
    # Dataset examples: activations in order, top before bottom, with crops and the cell of the maximum.
    (group,) = twin["examples"]
    assert group["dataset"] == DATASET and len(group["top"]) == 8 and len(group["bottom"]) == 4
    for sign in ("top", "bottom"):
        shown = doc.one("div", data_sign=sign).find_all("figure", data_activation=True)
        assert floats([f["data-activation"] for f in shown]) == floats([e["activation"] for e in group[sign]])
    acts = [e["activation"] for e in group["top"]]
    assert acts == sorted(acts, reverse=True)
    assert all(e["cell"] is not None and 0 <= e["position"] < 4 for e in group["top"])
    assert sum(e["crop_url"] is not None for e in group["top"]) == 4
    assert all(e["image_url"].startswith("/blobs/") for e in group["top"] + group["bottom"])
    # Images lazy-load.
    assert all(img.get("loading") == "lazy" for img in doc.find_all("img"))
    # Histogram and strip as inline SVG.
    hist = doc.one("figure", id="histogram").one("svg")
    assert len(hist.find_all("rect")) == len(twin["histogram"]["counts"])
    strip = doc.find("div", data_dataset=DATASET, data_buckets=True)
    assert strip is not None and int(strip["data-buckets"]) == len(twin["buckets"][0]["buckets"]) == 8
    assert len(strip.find_all("image")) == 24
    # Words and decomposition.
    rows = doc.one("section", data_section="words").find_all("tr", data_word=True)
    assert [(r["data-word"], float(r["data-activation"])) for r in rows] == [
        (w["word"], w["activation"]) for w in twin["words"][0]["words"]
    ]
    terms = doc.one("section", data_section="decomposition").find_all("tr", data_text=True)
    assert [(t["data-text"], float(t["data-coefficient"])) for t in terms] == [
        (t["text"], t["coefficient"]) for t in twin["decomposition"][0]["terms"]
    ]
    # Nearest units by direction, most similar first, never itself.
    nearest = doc.one("section", data_section="nearest")
    assert nearest["data-basis"] == twin["nearest"]["basis"] == "direction"
    shown = [(int(a["data-unit"]), float(a["data-similarity"])) for a in nearest.find_all("a", data_unit=True)]
    assert shown == [(n["index"], n["similarity"]) for n in twin["nearest"]["units"]]
    sims = [s for _, s in shown]
    assert sims == sorted(sims, reverse=True) and 0 not in [i for i, _ in shown] and len(shown) == 11
    # Labels, notes, collections, neighbours.
    assert [int(li["data-annotation"]) for li in doc.find_all("li", data_annotation=True)] == [a["id"] for a in twin["annotations"]]
    assert [li["data-collection"] for li in doc.find_all("li", data_collection=True)] == [c["id"] for c in twin["collections"]]
    assert twin["collections"][0]["id"] == "colour-units"
    assert twin["prev"] is None and twin["next"]["url"] == "/models/toy-rn/layer4/1"
    assert doc.one("a", rel="next")["href"] == twin["next"]["url"]


def test_unit_page_stats_match_store(web: TestClient, store: Store) -> None:
    from store.models import Layer, Unit
    from store.session import make_engine, make_sessionmaker

    engine = make_engine(store.database_url)
    with make_sessionmaker(engine)() as session:
        row = session.query(Unit).join(Layer).filter(Layer.model_id == "toy-vit", Unit.index == 2,
                                                     Layer.name == store.populated.models["toy-vit"]["layer"]).one()
        expected = {"max": row.max, "mean": row.mean, "std": row.std, "min": row.min, "fraction_active": row.fraction_active}
        edges = row.histogram["edges"]
    engine.dispose()
    layer = store.populated.models["toy-vit"]["layer"]
    doc, twin = page_and_twin(web, f"/models/toy-vit/{layer}/2")
    assert twin["stats"] == pytest.approx(expected)
    assert twin["histogram"]["edges"] == pytest.approx(edges)
    shown = {dd["data-stat"]: dd.text() for dd in doc.find_all("dd", data_stat=True)}
    assert set(shown) == set(expected)
    assert float(shown["max"]) == pytest.approx(expected["max"], rel=5e-3)
    # ViT neurons: the cell of the maximum lies in the 8x8 patch grid.
    assert all(0 <= e["position"] < 64 for e in twin["examples"][0]["top"])


def test_unit_without_results_says_so(web: TestClient) -> None:
    doc, twin = page_and_twin(web, "/models/toy-rn/layer4/100")
    assert set(twin["missing"]) == {
        "feature visualization", "dataset examples", "activation histogram", "conditional-probability samples",
        "rastered words", "text decomposition", "text feature visualization", "second-order direction",
    }
    text = doc.text()
    for sentence in ("No feature visualization has been computed", "No dataset examples have been computed",
                     "No rastered words have been computed", "No text decomposition has been computed",
                     "No maximal text has been computed"):
        assert sentence in text
    # No direction here, but the layer has a word embedding: neighbours by word profiles.
    assert twin["nearest"]["basis"] == "word_embedding" and len(twin["nearest"]["units"]) == 12
    # A layer with statistics only: nothing to compare, and the page says why.
    doc, twin = page_and_twin(web, "/models/toy-rn/layer3/1")
    assert twin["nearest"]["basis"] is None and twin["nearest"]["units"] == []
    assert "nothing to compare" in doc.one("section", data_section="nearest").text()
    assert twin["stats"] is not None and "feature visualization" in twin["missing"]


def test_not_found(web: TestClient) -> None:
    for path, reason in (("/models/nope", "unknown-model"), ("/models/toy-rn/nolayer", "unknown-layer"),
                         ("/models/toy-rn/layer4/768", "unknown-unit"), ("/collections/nope", "unknown-collection")):
        api = web.get("/api/v1" + path)
        assert api.status_code == 404 and api.json()["reason"] == reason, path
        page = web.get(path)
        assert page.status_code == 404 and "text/html" in page.headers["content-type"]
        assert parse(page.text).one("p", data_reason=reason)
    assert web.get("/api/v1/models/toy-rn/layer4/-1").status_code == 422
    assert web.get(f"/api/v1/models/toy-rn/layer4/{2**40}").status_code == 422
    assert web.get("/api/v1/nothing/here").json() == {"detail": "Not Found", "reason": "not-found"}


def test_export_is_one_json_line_per_unit(web: TestClient) -> None:
    r = web.get("/api/v1/models/toy-rn/layer4/export")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in r.headers["content-disposition"]
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [l["index"] for l in lines] == list(range(768))
    unit = web.get("/api/v1/models/toy-rn/layer4/0").json()
    assert lines[0]["label"] == unit["label"] and lines[0]["stats"] == unit["stats"]
    assert [w["word"] for w in lines[0]["words"]] == [w["word"] for w in unit["words"][0]["words"]]
    assert [e["activation"] for e in lines[0]["examples"] if e["sign"] == "top"] == [e["activation"] for e in unit["examples"][0]["top"]]
    assert [t["text"] for t in lines[0]["decomposition"]] == [t["text"] for t in unit["decomposition"][0]["terms"]]
    assert lines[500]["stats"] is None and lines[500]["words"] == []
    assert web.get("/api/v1/models/toy-rn/nolayer/export").status_code == 404


def test_search_page_matches_json(web: TestClient) -> None:
    doc, twin = page_and_twin(web, "/search?q=red")
    rows = doc.one("section", id="results").find_all("tr", data_unit=True)
    assert [(r["data-model"], r["data-layer"], int(r["data-unit"]), r["data-matched"]) for r in rows] == [
        (x["model"], x["layer"], x["index"], x["matched"]) for x in twin["results"]
    ]
    # Label matches come first: both toy models have unit 0 labelled "red things...".
    assert [(x["model"], x["index"], x["matched"]) for x in twin["results"][:2]] == [("toy-rn", 0, "label"), ("toy-vit", 0, "label")]
    assert {x["matched"] for x in twin["results"]} <= {"label", "note", "word", "decomposition"}
    only_rn = web.get("/api/v1/search?q=red&model=toy-rn").json()
    assert {x["model"] for x in only_rn["results"]} == {"toy-rn"}
    paged = web.get("/api/v1/search?q=a&per_page=3").json()
    assert len(paged["results"]) == 3 and paged["pagination"]["total"] > 3
    assert web.get("/api/v1/search?q=%25").json()["pagination"]["total"] == 0  # LIKE wildcards are literal
    assert web.get("/api/v1/search?q=zzzz-nothing").json()["results"] == []


def test_words_page_matches_json(web: TestClient) -> None:
    start = web.get("/api/v1/words").json()
    assert start["available"] and start["examples"]
    a, b = start["examples"][0], start["examples"][1]
    doc, twin = page_and_twin(web, f"/words?q={a}+-+{b}&k=7")
    assert twin["terms"] == [{"sign": "+", "word": a}, {"sign": "-", "word": b}]
    rows = doc.one("table", id="word-results").find_all("tr", data_word=True)
    assert [(r["data-word"], float(r["data-similarity"])) for r in rows] == [(x["word"], x["similarity"]) for x in twin["results"]]
    assert len(twin["results"]) == 7 and a not in [x["word"] for x in twin["results"]]
    sims = [x["similarity"] for x in twin["results"]]
    assert sims == sorted(sims, reverse=True)
    bad = web.get("/api/v1/words?q=red+%2B+qqqq")
    assert bad.status_code == 422 and bad.json()["unknown_words"] == ["qqqq"]
    page = web.get("/words?q=red+%2B+qqqq")
    assert page.status_code == 422 and "qqqq" in page.text


def test_words_arithmetic_is_right(web: TestClient, store: Store) -> None:
    import numpy as np

    from store.blobs import BlobStore
    from store.models import WordEmbedding, WordList
    from store.session import make_engine, make_sessionmaker

    engine = make_engine(store.database_url)
    with make_sessionmaker(engine)() as session:
        embedding = session.query(WordEmbedding).order_by(WordEmbedding.id).first()
        words = session.get(WordList, embedding.word_list_id).words
        matrix = np.load(BlobStore(store.blob_url).open(embedding.vectors_uri))
    engine.dispose()
    twin = web.get(f"/api/v1/words?q={words[3]}+%2B+{words[4]}+-+{words[5]}&k=5").json()
    query = matrix[3] + matrix[4] - matrix[5]
    sims = matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
    sims[[3, 4, 5]] = -np.inf
    expected = [words[i] for i in np.argsort(-sims)[:5]]
    assert [x["word"] for x in twin["results"]] == expected


def test_collections_pages_match_json(web: TestClient) -> None:
    doc, twin = page_and_twin(web, "/collections")
    rows = doc.one("table", id="collections").find_all("tr", data_collection=True)
    assert [r["data-collection"] for r in rows] == [c["id"] for c in twin["collections"]]
    doc, twin = page_and_twin(web, "/collections/colour-units")
    assert twin["title"] == "Colour units"
    cards = doc.one("div", id="members").find_all("a", data_unit=True)
    assert [(c["data-model"], c["data-layer"], int(c["data-unit"])) for c in cards] == [
        (u["model"], u["layer"], u["index"]) for u in twin["units"]
    ]
    assert [u["index"] for u in twin["units"]][:2] == [0, 7]


def test_jobs_page_matches_json(web: TestClient) -> None:
    doc, twin = page_and_twin(web, "/jobs")
    rows = doc.one("table", id="jobs").find_all("tr", data_job=True)
    assert [(int(r["data-job"]), r["data-state"]) for r in rows] == [(j["id"], j["state"]) for j in twin["jobs"]]
    assert twin["jobs"][0]["state"] == "running"  # running work first
    assert twin["counts"]["running"] >= 2 and twin["counts"]["pending"] >= 2
    shown = {a["data-state"]: int(a["data-count"]) for a in doc.find_all("a", data_state=True)}
    assert shown == twin["counts"]
    assert doc.find("meta", http_equiv="refresh") is not None  # refreshes itself while work runs
    running = web.get("/api/v1/jobs?state=running").json()
    assert {j["state"] for j in running["jobs"]} == {"running"}
    assert web.get("/api/v1/jobs?state=bogus").status_code == 422


def test_probe_form_matches_json(web: TestClient, store: Store) -> None:
    doc, twin = page_and_twin(web, "/probe")
    assert [m["id"] for m in twin["models"]] == ["toy-rn", "toy-vit"]
    assert twin["model"] == "toy-rn" and twin["layer"] == "layer4"
    picks = [int(b["data-position"]) for b in doc.find_all("button", data_position=True)]
    assert picks == [im["position"] for im in twin["dataset_images"]] == list(range(24))
    assert twin["limits"]["max_bytes"] == 10 * 1024 * 1024
    vit = web.get("/api/v1/probe?model=toy-vit").json()
    assert vit["layer"] == store.populated.models["toy-vit"]["layer"]


def test_docs_and_openapi(web: TestClient) -> None:
    assert web.get("/docs").status_code == 200
    spec = web.get("/api/v1/openapi.json").json()
    for path in ("/api/v1/models", "/api/v1/models/{model_id}/{layer}", "/api/v1/models/{model_id}/{layer}/{unit}",
                 "/api/v1/models/{model_id}/{layer}/export", "/api/v1/search", "/api/v1/search/prompt", "/api/v1/words",
                 "/api/v1/collections", "/api/v1/collections/{collection_id}", "/api/v1/jobs", "/api/v1/probe"):
        assert path in spec["paths"], path
    # Every list endpoint pages.
    for path in ("/api/v1/models", "/api/v1/models/{model_id}/{layer}", "/api/v1/search", "/api/v1/collections",
                 "/api/v1/collections/{collection_id}", "/api/v1/jobs", "/api/v1/probe"):
        params = {p["name"] for p in spec["paths"][path]["get"]["parameters"]}
        assert "page" in params, path
