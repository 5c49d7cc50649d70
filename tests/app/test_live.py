"""Live features: the probe's answer against a direct computation, the text-prompt search
against a direct ranking, rate limits (429 + Retry-After), and the model service's bounded,
batching queue (503 + Retry-After when full)."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.model_service import ModelService, ServiceBusy
from app.server import create_app
from store.blobs import BlobStore
from precompute.errors import Problem
from tests.app.conftest import Store
from tests.app.html import parse
from tests.app.images import png


def scene() -> Image.Image:
    from precompute.world import generate

    return generate(7, 3).image.resize((150, 120))


def hooked_output(loaded, module_path: str, pixels: torch.Tensor) -> torch.Tensor:
    """The output of one submodule of the vision tower, read with a plain forward hook."""
    seen: list[torch.Tensor] = []
    module = loaded.model.visual.get_submodule(module_path)
    handle = module.register_forward_hook(lambda _module, _inputs, output: seen.append(output.detach().clone()))
    try:
        loaded.model.eval()
        with torch.inference_mode():
            loaded.model.visual(pixels)
    finally:
        handle.remove()
    return seen[0]


def test_probe_matches_a_direct_forward_pass(live_web: TestClient, live_store: Store) -> None:
    from store.loading import load_registered
    from store.session import make_engine, make_sessionmaker

    data = png(scene())
    r = live_web.post("/api/v1/probe", data={"model": "toy-vit", "top_k": "8"}, files={"file": ("scene.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    layer = live_store.populated.models["toy-vit"]["layer"]
    assert layer == "transformer.resblocks.5.mlp"
    assert body["layer"] == layer and body["spatial"] == [8, 8] and body["unit_count"] == 512
    assert body["input"]["width"] == 150 and body["input"]["model_view"].startswith("data:image/png;base64,")

    engine = make_engine(live_store.database_url)
    with make_sessionmaker(engine)() as session:
        loaded = load_registered(session, "toy-vit")  # the model the server loads: trained or seeded random
    engine.dispose()
    pixels = loaded.preprocess(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0)
    # The MLP neurons (its GELU) on every token: drop the class token, 64 patch tokens of an 8 x 8 grid remain.
    tokens = hooked_output(loaded, "transformer.resblocks.5.mlp.gelu", pixels)
    if not getattr(loaded.model.visual.transformer, "batch_first", True):
        tokens = tokens.transpose(0, 1)
    patches = tokens[0, 1:, :]  # (64 patches, 512 units)
    assert patches.shape == (64, 512)
    maxima, where = patches.max(dim=0)
    expected = torch.argsort(maxima, descending=True)[:8]
    assert [u["index"] for u in body["units"]] == expected.tolist()
    assert [u["activation"] for u in body["units"]] == pytest.approx(maxima[expected].tolist(), abs=1e-4)
    first = body["units"][0]
    assert first["position"] == int(where[first["index"]])
    assert np.allclose(first["map"], patches[:, first["index"]].reshape(8, 8).numpy(), atol=1e-4)
    assert first["map_max"] == pytest.approx(first["activation"], abs=1e-4)
    assert first["cell"]["row"] * 8 + first["cell"]["col"] == first["position"]
    assert first["url"] == f"/models/toy-vit/{layer}/{first['index']}"


def test_probe_page_with_a_dataset_image(live_web: TestClient, live_store: Store) -> None:
    r = live_web.post("/probe", data={"model": "toy-rn", "layer": "layer4", "dataset": "synthetic-world", "position": "5"})
    assert r.status_code == 200, r.text[:300]
    doc = parse(r.text)
    section = doc.one("section", id="probe-result")
    cards = section.find_all("a", data_unit=True)
    assert len(cards) == 12
    api = live_web.post("/api/v1/probe", data={"model": "toy-rn", "dataset": "synthetic-world", "position": "5"}).json()
    assert [int(c["data-unit"]) for c in cards] == [u["index"] for u in api["units"]]
    assert all(c.find("svg") is not None for c in cards)  # the spatial map drawn over the image
    assert api["input"]["source"] == "dataset" and api["input"]["position"] == 5
    missing = live_web.post("/api/v1/probe", data={"model": "toy-rn", "dataset": "synthetic-world", "position": "999"})
    assert missing.status_code == 404
    nothing = live_web.post("/api/v1/probe", data={"model": "toy-rn"})
    assert nothing.status_code == 400 and nothing.json()["reason"] == "no-image"
    assert live_web.post("/api/v1/probe", data={"model": "nope", "dataset": "synthetic-world", "position": "1"}).status_code == 404
    assert live_web.post("/api/v1/probe", data={"model": "toy-rn", "layer": "layer9", "dataset": "synthetic-world",
                                                  "position": "1"}).status_code == 404


def test_live_endpoints_are_rate_limited(live_store: Store) -> None:
    settings = live_store.settings(live_rate_limit="3/minute")
    with TestClient(create_app(settings)) as client:
        form = {"model": "toy-rn", "dataset": "synthetic-world", "position": "1", "top_k": "2"}
        statuses = [client.post("/api/v1/probe", data=form).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        refused = client.post("/api/v1/probe", data=form)
        assert refused.status_code == 429 and refused.json()["reason"] == "rate-limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # The same budget covers the page, the prompt search, and refuses with an HTML page there.
        page = client.post("/probe", data=form)
        assert page.status_code == 429 and "text/html" in page.headers["content-type"] and "retry-after" in page.headers
        assert client.get("/api/v1/search/prompt?text=red&model=toy-rn").status_code == 429
        # Reading pages is never limited.
        assert all(client.get("/api/v1/models/toy-rn/layer4/0").status_code == 200 for _ in range(5))


def test_model_service_queue_is_bounded_and_batches() -> None:
    gate = threading.Event()
    loads: list[str] = []

    def load(model_id: str) -> SimpleNamespace:
        loads.append(model_id)
        gate.wait(10)  # the first request holds the worker until the test opens the gate
        raise Problem(422, "fake", "fake model")

    service = ModelService(load, max_queue=3, retry_after=7)
    try:
        first = service.submit("text", "m", None, "a")
        time.sleep(0.5)  # the worker has taken `first` and is loading
        queued = [service.submit("text", "m", None, str(i)) for i in range(3)]
        with pytest.raises(ServiceBusy) as busy:
            service.submit("text", "m", None, "overflow")
        assert busy.value.retry_after == 7
        gate.set()
        for future in [first, *queued]:
            with pytest.raises(Problem):
                future.result(10)
        # The three queued requests were answered as one batch: one more load, not three.
        assert loads == ["m", "m"]
    finally:
        service.close()


def test_busy_model_service_answers_503_with_retry_after(live_store: Store) -> None:
    app = create_app(live_store.settings())

    def busy(*_args, **_kwargs):
        raise ServiceBusy(9)

    app.state.model_service.submit = busy
    with TestClient(app) as client:
        r = client.post("/api/v1/probe", data={"model": "toy-rn", "dataset": "synthetic-world", "position": "1"})
        assert r.status_code == 503 and r.headers["retry-after"] == "9" and r.json()["reason"] == "busy"


def test_concurrent_probes_share_forward_passes(live_store: Store) -> None:
    form = {"model": "toy-rn", "dataset": "synthetic-world", "top_k": "3"}
    positions = range(8)
    with TestClient(create_app(live_store.settings())) as client:
        # One at a time first: each request is a batch of its own, the answer to compare with.
        alone = {p: client.post("/api/v1/probe", data={**form, "position": str(p)}).json() for p in positions}
        service = client.app.state.model_service
        # Hold the worker: a request for the other toy model whose loading waits on a gate, so
        # the eight probes sent meanwhile all wait in the queue when the worker comes back.
        gate, loading = threading.Event(), threading.Event()
        load = service._load

        def held_load(model_id: str):
            if model_id == "toy-vit":
                loading.set()
                gate.wait(30)
            return load(model_id)

        service._load = held_load
        before = service.batches_run
        image = Image.new("RGB", (64, 64), (200, 40, 40))
        held = service.submit("probe", "toy-vit", live_store.populated.models["toy-vit"]["layer"], image, top_k=1)
        assert loading.wait(10)
        together: dict[int, object] = {}

        def one(position: int) -> None:
            together[position] = client.post("/api/v1/probe", data={**form, "position": str(position)})

        threads = [threading.Thread(target=one, args=(p,)) for p in positions]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while service._queue.qsize() < len(positions) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert service._queue.qsize() == len(positions)
        gate.set()
        for t in threads:
            t.join(60)
        held.result(30)
        assert [together[p].status_code for p in positions] == [200] * 8
        # The held request was one batch; the eight that queued behind it ran as one more.
        assert service.batches_run - before == 2
        for p in positions:
            got, expected = together[p].json(), alone[p]
            assert [u["index"] for u in got["units"]] == [u["index"] for u in expected["units"]], p
            assert [u["activation"] for u in got["units"]] == pytest.approx([u["activation"] for u in expected["units"]], abs=1e-4)
            assert np.allclose([u["map"] for u in got["units"]], [u["map"] for u in expected["units"]], atol=1e-4)


# -- text-prompt search on a model with a tokenizer ------------------------------------------------
@pytest.fixture(scope="module")
def text_model(live_store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A toy-rn checkpoint that carries a vocabulary (random weights), registered as `toy-text`,
    with directions stored for ten units of its final layer."""
    import open_clip

    from store.models import Layer
    from store.session import make_engine, make_sessionmaker
    from precompute.checkpoints import META_VOCAB, write_checkpoint
    from tests.sample_store import store_directions
    from precompute.registry import load_model
    from precompute.world import caption_vocabulary
    from store.loading import register

    path: Path = tmp_path_factory.mktemp("text-model") / "toy-text.safetensors"
    torch.manual_seed(1)
    write_checkpoint(open_clip.create_model("toy-rn", pretrained=None), path, {META_VOCAB: json.dumps(caption_vocabulary())})
    loaded = load_model("toy-text", "toy-rn", checkpoint=path)
    blobs = BlobStore(live_store.blob_url)
    rng = np.random.default_rng(3)
    directions = rng.normal(size=(10, 128)).astype(np.float32)
    engine = make_engine(live_store.database_url)
    with make_sessionmaker(engine)() as session:
        register(session, loaded, "text test model")
        layer4 = session.query(Layer).filter(Layer.model_id == "toy-text", Layer.name == "layer4").one()
        store_directions(session, blobs, layer4.id, dict(enumerate(directions)))
        session.commit()
        # A random toy model has no vocabulary at all, whatever checkpoints exist.
        register(session, load_model("toy-mute", "toy-rn"), "no text tower")
        layer4 = session.query(Layer).filter(Layer.model_id == "toy-mute", Layer.name == "layer4").one()
        store_directions(session, blobs, layer4.id, {0: directions[0]})
        session.commit()
    engine.dispose()
    yield {"loaded": loaded, "directions": directions}


def _pursuit(directions: np.ndarray, target: np.ndarray, terms: int) -> tuple[np.ndarray, list[int]]:
    """scikit-learn's OMP code of `target`, and its units listed as the search lists them: those
    that add to the target, then those that subtract, each in the order the pursuit picked them."""
    from sklearn.linear_model import orthogonal_mp

    path = orthogonal_mp(directions.T.astype(np.float64), target.astype(np.float64), n_nonzero_coefs=terms,
                         return_path=True)
    code = path[:, -1]
    picked = sorted(np.flatnonzero(code), key=lambda i: int(np.flatnonzero(path[i])[0]))  # the step each unit entered
    return code, [i for i in picked if code[i] > 0] + [i for i in picked if code[i] <= 0]


def test_prompt_search_is_a_sparse_code_over_the_directions(live_web: TestClient, text_model: dict) -> None:
    loaded = text_model["loaded"]
    directions = text_model["directions"] / np.linalg.norm(text_model["directions"], axis=1, keepdims=True)

    def encoded(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return torch.nn.functional.normalize(loaded.model.encode_text(loaded.tokenizer(texts)), dim=-1).numpy()

    # Read as a class name (the default): the mean of the toy prompts of a name the world has no class for.
    prompts = encoded(["a photo of a a red circle", "a a red circle", "a picture of a a red circle"]).mean(0)
    as_class = prompts / np.linalg.norm(prompts)
    as_typed = encoded(["a red circle"])[0]
    for params, text in (({}, as_class), ({"reading": "text"}, as_typed)):
        r = live_web.get("/api/v1/search/prompt", params={"text": "a red circle", "model": "toy-text", "k": 5, **params})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["layers_searched"] == ["layer4"] and body["missing"] == [] and body["centred_on"] is None
        assert body["reading"] == params.get("reading", "class")
        code, expected = _pursuit(directions, text, 5)
        assert [u["index"] for u in body["results"]] == expected
        assert [u["coefficient"] for u in body["results"]] == pytest.approx(code[expected].tolist(), abs=1e-4)
        assert [u["similarity"] for u in body["results"]] == pytest.approx((directions[expected] @ text).tolist(), abs=1e-4)
        assert [u["rank"] for u in body["results"]] == list(range(5))
    # The pursuit's first pick is the direction most aligned with the prompt, whatever k.
    first = int(np.argmax(np.abs(directions @ as_class)))
    one = live_web.get("/api/v1/search/prompt", params={"text": "a red circle", "model": "toy-text", "k": 1}).json()
    assert [u["index"] for u in one["results"]] == [first]
    # The page asks for 24 units: all ten directions, in the order of the 10-term code.
    page = parse(live_web.get("/search", params={"prompt": "a red circle", "model": "toy-text"}).text)
    cards = page.one("section", id="prompt-results").find_all("a", data_unit=True)
    assert [int(c["data-unit"]) for c in cards] == _pursuit(directions, as_class, 10)[1]
    typed = parse(live_web.get("/search", params={"prompt": "a red circle", "model": "toy-text", "reading": "text"}).text)
    cards = typed.one("section", id="prompt-results").find_all("a", data_unit=True)
    assert [int(c["data-unit"]) for c in cards] == _pursuit(directions, as_typed, 10)[1]


def test_prompt_search_says_what_it_cannot_do(live_web: TestClient, text_model: dict) -> None:
    for reading in ("class", "text"):
        unknown = live_web.get("/api/v1/search/prompt", params={"text": "a red zeppelin", "model": "toy-text", "reading": reading})
        assert unknown.status_code == 422 and unknown.json()["unknown_words"] == ["zeppelin"], reading
    page = live_web.get("/search", params={"prompt": "a red zeppelin", "model": "toy-text"})
    assert page.status_code == 422 and "zeppelin" in page.text
    # No directions stored for this layer: said plainly, without running the model.
    none = live_web.get("/api/v1/search/prompt", params={"text": "red", "model": "toy-text", "layer": "layer3"}).json()
    assert none["results"] == [] and "No unit directions are stored" in none["missing"][0]
    # A model without a vocabulary (random toy weights) cannot read text.
    for reading in ("class", "text"):
        no_text = live_web.get("/api/v1/search/prompt", params={"text": "red", "model": "toy-mute", "reading": reading})
        assert no_text.status_code == 422 and no_text.json()["reason"] == "no-text-tower", reading
    assert live_web.get("/api/v1/search/prompt", params={"text": "red", "model": "nope"}).status_code == 404
    assert live_web.get("/search", params={"prompt": "red"}).status_code == 422  # a model is needed
    odd = live_web.get("/api/v1/search/prompt", params={"text": "red", "model": "toy-text", "reading": "loud"})
    assert odd.status_code == 422
    page = live_web.get("/search", params={"prompt": "red", "model": "toy-text", "reading": "loud"})
    assert page.status_code == 422 and "reading" in page.text
