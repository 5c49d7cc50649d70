"""The text side on the pages, over a real store: the decompose job's output in the unit page's
"Text decomposition" panel (HTML and JSON twin), units found by a decomposition term, and the
prompt search as a sparse code over the layer's directions. The directions are planted text
embeddings (tests.text_side), so the right answers are known."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sklearn.linear_model import orthogonal_mp

from app.server import create_app
from app.settings import Settings
from precompute.registry import load_embedded
from tests.app.html import parse
from tests.text_side import LAYER, MODEL, PLANTED, POOL, SILENT, planted_directions, prepare_planted_store, world_embeddings
from tests.workers.precompute_helpers import single_thread, store_config
from workers.decompose_job import DecomposeRequest, run_decompose

RED_UNIT = 3


@pytest.fixture(scope="module")
def toy_vit():
    return load_embedded("toy-vit")


@pytest.fixture
def client(migrated_url: str, tmp_path: Path, toy_vit) -> Iterator[TestClient]:
    for _ in single_thread():
        prepare_planted_store(migrated_url, tmp_path, toy_vit)
        run_decompose(store_config(migrated_url, tmp_path),
                      DecomposeRequest(model_id=MODEL, layer=LAYER, pool_id=POOL, terms=6), show_progress=False,
                      loaded=toy_vit)
        settings = Settings(database_url=migrated_url, data_dir=tmp_path / "data", blob_url=str(tmp_path / "blobs"),
                            device="cpu", page_cache_seconds=0)
        with TestClient(create_app(settings)) as test_client:
            yield test_client


def test_the_panel_lists_signed_terms_as_bars_with_the_score(client: TestClient) -> None:
    twin = client.get(f"/api/v1/models/{MODEL}/{LAYER}/{RED_UNIT}").json()
    assert twin["has_direction"] and "text decomposition" not in twin["missing"]
    (group,) = twin["decomposition"]
    assert group["pool"] == POOL and 0.5 < group["score"] <= 1
    terms = group["terms"]
    assert [t["rank"] for t in terms] == list(range(6)) and terms[0]["text"] == "red" and terms[0]["coefficient"] > 0
    page = parse(client.get(f"/models/{MODEL}/{LAYER}/{RED_UNIT}").text)
    panel = page.one("section", data_section="decomposition")
    rows = panel.one("table", data_pool=POOL).find_all("tr", data_text=True)
    assert [r["data-text"] for r in rows] == [t["text"] for t in terms]
    bars = [r.find_all("span") for r in rows]
    assert all(len(b) == 1 and "width:" in b[0]["style"] for b in bars)
    assert bars[0][0]["style"] == "width:100.0%"  # the largest term fills its bar
    signs = [r.find_all("td")[1]["class"].split()[-1] for r in rows]
    assert signs == ["neg" if t["coefficient"] < 0 else "pos" for t in terms]
    score = panel.one("span", class_="reconstruction")
    assert float(score["data-score"]) == pytest.approx(group["score"]) and f"{group['score']:.3f}" in score.text()

    silent = client.get(f"/api/v1/models/{MODEL}/{LAYER}/{SILENT}").json()
    assert silent["decomposition"] == [] and "text decomposition" in silent["missing"]
    none = client.get(f"/api/v1/models/{MODEL}/{LAYER}/7").json()  # no direction stored for unit 7
    assert not none["has_direction"] and "second-order direction" in none["missing"]


def test_search_finds_units_by_a_decomposition_term(client: TestClient) -> None:
    body = client.get("/api/v1/search", params={"q": "purple", "model": MODEL}).json()
    found = {r["index"]: r for r in body["results"]}
    assert 300 in found and found[300]["matched"] == "decomposition" and found[300]["match_text"] == "purple"
    page = parse(client.get("/search", params={"q": "purple", "model": MODEL}).text)
    rows = page.one("section", id="results").find_all("tr", data_unit=True)
    assert "300" in [r["data-unit"] for r in rows]


def test_prompt_search_composes_the_prompt_from_unit_directions(client: TestClient, toy_vit) -> None:
    # The planted directions are word embeddings: the prompt read as typed is the word they were made of.
    params = {"text": "red", "model": MODEL, "layer": LAYER, "reading": "text"}
    body = client.get("/api/v1/search/prompt", params={**params, "k": 4}).json()
    assert body["layers_searched"] == [LAYER] and body["centred_on"] == POOL and body["missing"] == []
    assert body["reading"] == "text"
    # What it should be, computed here: the prompt centred on the pool's mean, OMP by scikit-learn,
    # the units that add listed first, each group in the order the pursuit picked them.
    pool = world_embeddings(toy_vit)
    with torch.inference_mode():
        prompt = torch.nn.functional.normalize(toy_vit.model.encode_text(toy_vit.tokenizer(["red"])).float(), dim=-1)[0]
    target = (prompt - pool.mean(0)).numpy().astype(np.float64)
    directions = planted_directions(toy_vit)
    units = np.array(list(PLANTED))
    keep = np.linalg.norm(directions, axis=1) > 0
    path = orthogonal_mp(directions[keep].T.astype(np.float64), target, n_nonzero_coefs=4, return_path=True)
    code = path[:, -1]
    picked = sorted(np.flatnonzero(code), key=lambda i: int(np.flatnonzero(path[i])[0]))
    order = [i for i in picked if code[i] > 0] + [i for i in picked if code[i] <= 0]
    assert [r["index"] for r in body["results"]] == units[keep][order].tolist()
    assert [r["coefficient"] for r in body["results"]] == pytest.approx(code[order].tolist(), abs=1e-3)
    assert body["results"][0]["index"] == RED_UNIT  # the unit whose direction is "red" comes first

    page = parse(client.get("/search", params={"prompt": "red", "model": MODEL, "layer": LAYER, "reading": "text"}).text)
    cards = page.one("section", id="prompt-results").find_all("a", data_unit=True)
    assert cards[0]["data-unit"] == str(RED_UNIT) and float(cards[0]["data-coefficient"]) > 0
    assert all(card.find("img") is not None or card.find("span") is not None for card in cards)

    empty = client.get("/api/v1/search/prompt", params={"text": "   ", "model": MODEL})
    assert empty.status_code == 422 and empty.json()["reason"] == "empty-prompt"
    elsewhere = client.get("/api/v1/search/prompt", params={"text": "red", "model": MODEL,
                                                             "layer": "transformer.resblocks.4.mlp"}).json()
    assert elsewhere["results"] == [] and "No unit directions are stored" in elsewhere["missing"][0]
