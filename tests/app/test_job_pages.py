"""The unit, layer and search pages on a store the real examples and words jobs filled
(tests/job_store.py), on SQLite and Postgres, against activations computed here: the same
toy models and pictures run through plain forward hooks on the torch modules, maxima taken
with numpy.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from tests.app.test_pages import floats, page_and_twin
from tests.job_store import DATASET, FINAL_LAYERS, IMAGES, TOP_K, TOP_WORDS, WORLD_SEED, JobStore, world_words


@dataclass
class Reference:
    values: np.ndarray  # (inputs, units): each unit's maximum over the spatial grid
    cells: np.ndarray  # (inputs, units): flat index of that maximum in the grid


def _load(model_id: str):
    """The weights the store registered: the shipped checkpoint, or the seeded random model."""
    from precompute.registry import load_embedded, load_model
    from precompute.toy import embedded_checkpoint

    return load_embedded(model_id) if embedded_checkpoint(model_id).is_file() else load_model(model_id, model_id)


def _maxima(loaded, model_id: str, pixels: torch.Tensor) -> Reference:
    """ResNet stage outputs are ranked before their final ReLU (the input of the last block's
    act3); ViT MLP neurons after their GELU, over the patch tokens (the class token left out)."""
    visual = loaded.model.visual
    seen: list[torch.Tensor] = []
    if model_id == "toy-rn":
        handle = visual.layer4[-1].act3.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].clone()))
    else:
        handle = visual.transformer.resblocks[5].mlp.gelu.register_forward_hook(lambda _m, _i, out: seen.append(out.clone()))
    loaded.model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(pixels), 100):
                visual(pixels[start : start + 100])
    finally:
        handle.remove()
    captured = torch.cat(seen).numpy()
    if model_id == "toy-rn":
        grid = captured.reshape(*captured.shape[:2], -1)  # (inputs, units, h * w)
    else:
        if not getattr(visual.transformer, "batch_first", True):
            captured = captured.transpose(1, 0, 2)
        grid = captured[:, 1:, :].transpose(0, 2, 1)  # (inputs, units, patches)
    return Reference(grid.max(axis=2), grid.argmax(axis=2))


def _png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def pictures() -> list[bytes]:
    from precompute.world import generate

    return [_png(generate(WORLD_SEED, i).image) for i in range(IMAGES)]


@pytest.fixture(scope="module")
def on_dataset(pictures: list[bytes]) -> dict[str, Reference]:
    from PIL import Image

    out = {}
    for model_id in FINAL_LAYERS:
        loaded = _load(model_id)
        pixels = torch.stack([loaded.preprocess(Image.open(io.BytesIO(p)).convert("RGB")) for p in pictures])
        out[model_id] = _maxima(loaded, model_id, pixels)
    return out


@pytest.fixture(scope="module")
def on_words() -> dict[str, Reference]:
    from precompute.words import render_word

    out = {}
    for model_id in FINAL_LAYERS:
        loaded = _load(model_id)
        pixels = torch.stack([loaded.preprocess(render_word(w, loaded.spec.image_size)) for w in world_words()])
        out[model_id] = _maxima(loaded, model_id, pixels)
    return out


def _sha(picture: bytes) -> str:
    return hashlib.sha256(picture).hexdigest()


@pytest.mark.parametrize("model_id", list(FINAL_LAYERS))
@pytest.mark.parametrize("index", [0, 7, 300])
def test_unit_page_shows_the_units_strongest_and_weakest_images(job_web: TestClient, on_dataset: dict[str, Reference],
                                                                 pictures: list[bytes], model_id: str, index: int) -> None:
    layer = FINAL_LAYERS[model_id]
    doc, twin = page_and_twin(job_web, f"/models/{model_id}/{layer}/{index}")
    ref = on_dataset[model_id]
    column = ref.values[:, index]
    positions = np.arange(IMAGES)
    expected = {"top": np.lexsort((positions, -column))[:TOP_K], "bottom": np.lexsort((positions, column))[:TOP_K]}
    (group,) = twin["examples"]
    assert group["dataset"] == DATASET
    for sign, picks in expected.items():
        shown = group[sign]
        assert [e["rank"] for e in shown] == list(range(TOP_K))
        assert [e["activation"] for e in shown] == pytest.approx(column[picks].tolist(), rel=1e-4, abs=1e-4), sign
        # The pictures themselves, by content: each example's image is the dataset picture found here.
        assert all(_sha(pictures[p]) in e["image_url"] for e, p in zip(shown, picks)), sign
        figures = doc.one("div", data_sign=sign).find_all("figure", data_activation=True)
        assert floats([f["data-activation"] for f in figures]) == floats([e["activation"] for e in shown])
    assert [e["position"] for e in group["top"]] == ref.cells[expected["top"], index].tolist()
    stats = twin["stats"]
    assert stats["max"] == pytest.approx(column.max(), rel=1e-4, abs=1e-4)
    assert stats["min"] == pytest.approx(column.min(), rel=1e-4, abs=1e-4)
    assert stats["mean"] == pytest.approx(column.astype(np.float64).mean(), rel=1e-3, abs=1e-4)
    assert stats["fraction_active"] == pytest.approx((column > 0).mean(), abs=1.5 / IMAGES)
    assert sum(twin["histogram"]["counts"]) + (twin["histogram"]["underflow"] or 0) + (twin["histogram"]["overflow"] or 0) == IMAGES
    # What no job writes yet is said to be missing; what the jobs wrote is not.
    assert "dataset examples" not in twin["missing"] and "rastered words" not in twin["missing"]
    assert "feature visualization" in twin["missing"]


@pytest.mark.parametrize("model_id", list(FINAL_LAYERS))
def test_unit_page_words_are_the_words_it_fires_on_most(job_web: TestClient, on_words: dict[str, Reference],
                                                        model_id: str) -> None:
    layer = FINAL_LAYERS[model_id]
    words = np.array(world_words())
    column = on_words[model_id].values[:, 5]
    best = np.lexsort((np.arange(len(words)), -column))[:TOP_WORDS]
    doc, twin = page_and_twin(job_web, f"/models/{model_id}/{layer}/5")
    (group,) = twin["words"]
    assert [w["word"] for w in group["words"]] == words[best].tolist()
    assert [w["activation"] for w in group["words"]] == pytest.approx(column[best].tolist(), rel=1e-4, abs=1e-4)
    rows = doc.one("section", data_section="words").find_all("tr", data_word=True)
    assert [r["data-word"] for r in rows] == words[best].tolist()


def test_layer_page_lists_every_unit_and_sorts_by_activation(job_web: TestClient, on_dataset: dict[str, Reference]) -> None:
    maxima = on_dataset["toy-rn"].values.max(axis=0)
    assert maxima.shape == (768,)
    doc, twin = page_and_twin(job_web, "/models/toy-rn/layer4?per_page=50")
    p = twin["pagination"]
    assert p["total"] == 768 and p["pages"] == 16
    assert [u["index"] for u in twin["units"]] == list(range(50))
    assert [int(c["data-unit"]) for c in doc.one("div", id="units").find_all("a", data_unit=True)] == list(range(50))
    assert all(len(u["top_words"]) > 0 and u["thumbnail_kind"] == "example" for u in twin["units"])
    assert [u["max"] for u in twin["units"]] == pytest.approx(maxima[:50].tolist(), rel=1e-4, abs=1e-4)
    last = job_web.get("/api/v1/models/toy-rn/layer4?per_page=50&page=16").json()
    assert [u["index"] for u in last["units"]] == list(range(750, 768)) and last["pagination"]["next_url"] is None
    by_activation = job_web.get("/api/v1/models/toy-rn/layer4?sort=activation&per_page=20").json()
    strongest = np.argsort(-maxima, kind="stable")[:20]
    assert [u["index"] for u in by_activation["units"]] == strongest.tolist()


@pytest.mark.parametrize("model_id", list(FINAL_LAYERS))
def test_search_for_a_units_top_word_finds_the_unit(job_web: TestClient, on_words: dict[str, Reference], model_id: str) -> None:
    words = world_words()
    values = on_words[model_id].values  # (words, units)
    ordered = np.sort(values, axis=0)
    unit = int(np.argmax(ordered[-1] - ordered[-2]))  # the clearest winner: no near tie to flip
    word = words[int(np.argmax(values[:, unit]))]
    layer = FINAL_LAYERS[model_id]
    doc, twin = page_and_twin(job_web, f"/search?q={word}&model={model_id}&per_page=200")
    found = [(r["layer"], r["index"], r["matched"], r["match_text"]) for r in twin["results"]]
    assert (layer, unit, "word", word) in found, (word, unit, found[:10])
    rows = doc.one("section", id="results").find_all("tr", data_unit=True)
    assert (model_id, layer, unit) in [(r["data-model"], r["data-layer"], int(r["data-unit"])) for r in rows]
