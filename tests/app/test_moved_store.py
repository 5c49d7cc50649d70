"""A store filled by the real jobs keeps serving when its data folder moves, when its blobs are
copied to another fsspec location, and when a blob goes missing after all.

One store per backend is built at `original/` by the jobs the demo runs (a synthetic dataset,
toy-rn's final layer, the examples and words jobs), then its whole data folder is moved to
`moved/` and `original/` deleted, so a reference that still named the old folder would find
nothing. Every page kind and its JSON twin, and every blob they link, must then answer
without a 5xx, and every blob's bytes must hash to its name.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.server import create_app
from app.settings import Settings
from tests.app.conftest import _postgres_schema
from tests.workers.precompute_helpers import single_thread

MODEL = "toy-rn"
LAYER = "layer4"
DATASET = "world"
IMAGES = 120
WORDS = 60
UNITS = (0, 5, 17, 300, 767)


@dataclass
class BuiltStore:
    backend: str
    database_url: str
    data_dir: Path  # the moved data folder: microscope.db (SQLite), blobs/, blobs/job-state/
    root: Path

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {"data_dir": self.data_dir, "database_url": self.database_url, "device": "cpu",
                                  "live_rate_limit": "10000/minute", "page_cache_seconds": 0}
        values.update(overrides)
        return Settings(**values)


def _fill(database_url: str, data_dir: Path) -> None:
    """What `microscope demo` does, on a small dataset, one model's final layer and few words."""
    from precompute.registry import load_embedded
    from precompute.words import common_words
    from store import migrations
    from store.blobs import BlobStore
    from store.loading import register
    from store.session import make_engine, make_sessionmaker
    from workers.datasets import DatasetSource, register_dataset
    from workers.engines import StoreConfig
    from workers.examples_job import request_from_options, run_examples
    from workers.words_job import WordsRequest, run_words

    migrations.upgrade(database_url)
    settings = Settings(data_dir=data_dir, database_url=database_url, device="cpu")
    engine = make_engine(database_url)
    try:
        sessions = make_sessionmaker(engine)
        register_dataset(sessions, BlobStore(settings.blob_url), DATASET, DatasetSource("synthetic", "", count=IMAGES, seed=0))
        loaded = load_embedded(MODEL, device="cpu")
        with sessions() as session:
            register(session, loaded)
    finally:
        engine.dispose()
    store = StoreConfig.from_settings(settings)
    run_examples(store, request_from_options(model_id=MODEL, dataset_id=DATASET, layers=(LAYER,), device="cpu"),
                 show_progress=False, loaded=loaded)
    run_words(store, WordsRequest(model_id=MODEL, layers=(LAYER,), words=tuple(common_words(WORDS)),
                                  source=f"wordfreq:en:{WORDS}", device="cpu"), show_progress=False, loaded=loaded)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltStore]:
    root = tmp_path_factory.mktemp(f"moved-{request.param}")
    original = root / "original"
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{original / 'microscope.db'}"
    else:
        url, drop = _postgres_schema()
    try:
        for _ in single_thread():
            _fill(url, original)
        shutil.copytree(original, root / "moved")
        shutil.rmtree(original)
        if request.param == "sqlite":
            url = f"sqlite:///{root / 'moved' / 'microscope.db'}"
        yield BuiltStore(request.param, url, root / "moved", root)
    finally:
        if drop:
            drop()


def _page_urls(client: TestClient) -> list[str]:
    """One URL of every page kind that reads the store, HTML and JSON twin alike."""
    unit = client.get(f"/api/v1/models/{MODEL}/{LAYER}/{UNITS[0]}").json()
    word = unit["words"][0]["words"][0]["word"]
    other = unit["words"][0]["words"][1]["word"]
    pages = [
        "/", "/models/toy-rn", f"/models/{MODEL}/{LAYER}", f"/models/{MODEL}/{LAYER}?sort=activation",
        *(f"/models/{MODEL}/{LAYER}/{index}" for index in UNITS),
        f"/search?q={word}", f"/words?q={word}+-+{other}&model={MODEL}&layer={LAYER}", "/words", "/jobs", "/collections",
        f"/probe?model={MODEL}",
    ]
    return pages + [f"/api/v1{path}" if path != "/" else "/api/v1/models" for path in pages] + [
        f"/api/v1/models/{MODEL}/{LAYER}/export"
    ]


def _blob_links(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(_blob_links(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_blob_links(v) for v in value)) if value else set()
    return {value} if isinstance(value, str) and value.startswith("/blobs/") else set()


def _serve_everything(client: TestClient) -> set[str]:
    """Request every page and every blob they link; returns the blob links seen."""
    links: set[str] = set()
    for path in _page_urls(client):
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        if path.endswith("/export"):
            continue
        if path.startswith("/api/"):
            links |= _blob_links(response.json())
        else:
            links |= set(re.findall(r'src="(/blobs/[^"]+)"', response.text))
    probe = client.post("/api/v1/probe", data={"model": MODEL, "layer": LAYER, "dataset": DATASET, "position": "3"})
    assert probe.status_code == 200, probe.text[:300]
    for link in sorted(links):
        response = client.get(link)
        assert response.status_code == 200, (link, response.status_code)
        name = link.rsplit("/", 1)[-1]
        if link.startswith("/blobs/crop/"):  # cut from the stored image `name` on request
            assert response.headers["content-type"] == "image/png" and response.content.startswith(b"\x89PNG"), link
            continue
        assert hashlib.sha256(response.content).hexdigest() == name.split(".")[0], link
    return links


def test_stored_references_are_names(built: BuiltStore) -> None:
    from store.models import DatasetExample, Job, StoredImage, WordEmbedding
    from store.session import make_engine, make_sessionmaker

    name = re.compile(r"^[0-9a-f]{64}\.[a-z0-9]+$")
    engine = make_engine(built.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            images = session.scalars(select(StoredImage.blob_uri)).all()
            crops = session.scalars(select(DatasetExample.crop_uri)).all()
            boxes = session.scalars(select(DatasetExample.crop_box)).all()
            embeddings = session.execute(select(WordEmbedding.vectors_uri, WordEmbedding.mean_uri)).all()
            states = session.scalars(select(Job.state_uri)).all()
    finally:
        engine.dispose()
    assert len(images) == IMAGES and all(name.match(uri) for uri in images)
    # layer4 is spatial: every example records its crop box; the crop is cut from the image on request.
    assert crops and all(uri is None for uri in crops) and all(re.fullmatch(r"\d+,\d+,\d+,\d+,\d+", box) for box in boxes)
    assert embeddings and all(name.match(a) and name.match(b) for a, b in embeddings)
    states = [uri for uri in states if uri is not None]  # jobs that keep no state have none
    assert len(states) == 2 and all("/" not in uri and uri.endswith(".npz") for uri in states)
    assert all((built.data_dir / "blobs" / "job-state" / uri).is_file() for uri in states)


def test_a_moved_data_folder_serves_every_page(built: BuiltStore) -> None:
    assert not (built.root / "original").exists()
    with TestClient(create_app(built.settings())) as client:
        links = _serve_everything(client)
        unit = client.get(f"/api/v1/models/{MODEL}/{LAYER}/{UNITS[0]}").json()
        words = client.get(f"/api/v1/words?q={unit['words'][0]['words'][0]['word']}&model={MODEL}&layer={LAYER}").json()
    # The pages really show the jobs' images, and the server really read its blobs.
    assert len(links) > 50
    assert all(e["image_url"] and e["crop_url"] for g in unit["examples"] for e in g["top"] + g["bottom"])
    assert unit["nearest"]["basis"] == "word_embedding" and unit["nearest"]["units"]
    assert words["results"] and not words["missing"]


def test_blobs_copied_to_another_fsspec_location(built: BuiltStore, tmp_path: Path) -> None:
    """The blobs on fsspec's in-memory filesystem, and the data folder left without them:
    everything comes through MICROSCOPE_BLOB_URL."""
    root = f"memory://microscope-{uuid.uuid4().hex}/blobs"
    memory = fsspec.filesystem("memory")
    memory.put(str(built.data_dir / "blobs"), root, recursive=True)
    bare = tmp_path / "data-without-blobs"
    bare.mkdir()
    if built.backend == "sqlite":
        shutil.copy(built.data_dir / "microscope.db", bare / "microscope.db")
    url = f"sqlite:///{bare / 'microscope.db'}" if built.backend == "sqlite" else built.database_url
    try:
        with TestClient(create_app(built.settings(data_dir=bare, database_url=url, blob_url=root))) as client:
            links = _serve_everything(client)
        assert len(links) > 50
        assert not (bare / "blobs").exists()
    finally:
        memory.rm(root.rsplit("/", 1)[0], recursive=True)


def test_a_missing_blob_is_a_placeholder_null_and_404(built: BuiltStore, tmp_path: Path) -> None:
    """Blobs copied to another local folder, given as a file:// URL; then one example image a
    unit page shows and the word embedding the server reads are deleted from it."""
    from store.blobs import BlobStore

    folder = tmp_path / "damaged-blobs"
    shutil.copytree(built.data_dir / "blobs", folder)
    settings = built.settings(blob_url=f"file://{folder}")
    store = BlobStore(settings.blob_url)
    unit_path = f"/models/{MODEL}/{LAYER}/{UNITS[0]}"
    with TestClient(create_app(settings)) as client:
        before = client.get(f"/api/v1{unit_path}").json()
        embedding_row = client.get("/api/v1/words").json()["available"][0]
    example = before["examples"][0]["top"][0]
    lost_image = example["image_url"].rsplit("/", 1)[-1]
    word = before["words"][0]["words"][0]["word"]
    (folder / lost_image[:2] / lost_image[2:4] / lost_image).unlink()
    lost_embedding = _vectors_name(built.database_url)
    Path(store.path_for(lost_embedding)).unlink()

    # A fresh server: the one above holds the embedding in memory, legitimately.
    with TestClient(create_app(settings)) as client:
        # The unit page: the example is still listed, its image is a placeholder / null.
        after = client.get(f"/api/v1{unit_path}").json()
        entry = next(e for e in after["examples"][0]["top"] if e["rank"] == example["rank"])
        # Its crop is cut from that image: a placeholder too, and its URL answers a placeholder, not a 500.
        assert entry["image_url"] is None and entry["crop_url"] is None
        lost_crop = client.get(example["crop_url"])
        assert lost_crop.status_code == 404 and lost_crop.headers["content-type"].startswith("image/svg")
        assert lost_crop.headers["cache-control"] == "no-store"
        html = client.get(unit_path)
        assert html.status_code == 200
        figure = re.search(rf'<figure class="example" data-rank="{example["rank"]}".*?</figure>', html.text, re.S).group(0)
        assert 'class="missing-blob"' in figure and "/static/missing-blob.svg" in figure and lost_image not in figure
        assert client.get("/static/missing-blob.svg").status_code == 200

        # The blob itself: a 404 with a reason.
        gone = client.get(f"/blobs/{lost_image}")
        assert gone.status_code == 404 and "missing-blob" in gone.text
        assert client.get(f"/blobs/{'0' * 64}.png").status_code == 404
        assert client.get("/blobs/not-a-name.png").status_code == 404
        crop_box = example["crop_url"].split("/")[-2]
        for bad in (f"/blobs/crop/{MODEL}/1,2,3/{lost_image}", f"/blobs/crop/{MODEL}/0,0,9999,9999,64/{lost_image}",
                    f"/blobs/crop/no-such-model/{crop_box}/{lost_image}", f"/blobs/crop/{MODEL}/{crop_box}/not-a-name.png"):
            assert client.get(bad).status_code == 404, bad

        # Read server-side: nearest units and word arithmetic say the embedding is missing.
        assert after["nearest"]["basis"] is None and "missing from the blob store" in after["nearest"]["explanation"]
        words = client.get(f"/api/v1/words?q={word}&model={embedding_row['model']}&layer={embedding_row['layer']}")
        assert words.status_code == 200 and words.json()["results"] == []
        assert any(lost_embedding in line and "missing from the blob store" in line for line in words.json()["missing"])
        assert "missing from the blob store" in client.get(f"/words?q={word}").text

        # A live probe of the lost dataset image: a clean 404, not a 500.
        position = _position_of(built.database_url, lost_image)
        probe = client.post("/api/v1/probe", data={"model": MODEL, "layer": LAYER, "dataset": DATASET, "position": str(position)})
        assert probe.status_code == 404 and probe.json()["reason"] == "missing-blob"

        # Every other page still answers, with no 5xx anywhere.
        for path in _page_urls(client):
            assert client.get(path).status_code == 200, path


def _vectors_name(database_url: str) -> str:
    from store.models import WordEmbedding
    from store.session import make_engine, make_sessionmaker

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return session.scalars(select(WordEmbedding.vectors_uri)).one()
    finally:
        engine.dispose()


def _position_of(database_url: str, name: str) -> int:
    from store.models import DatasetImage, StoredImage
    from store.session import make_engine, make_sessionmaker

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return session.scalars(select(DatasetImage.position).join(StoredImage, StoredImage.id == DatasetImage.image_id)
                                   .where(StoredImage.blob_uri == name)).first()
    finally:
        engine.dispose()


def test_a_missing_direction_set_is_left_out_and_said(store: Any, tmp_path: Path) -> None:
    """The sample store's layer directions are one blob (store.directions); with it deleted
    from a copy of the blobs, nearest units fall back to another basis and say why, and the
    prompt search says the layer's directions are missing."""
    from store.models import DirectionSet, Layer
    from store.session import make_engine, make_sessionmaker

    folder = tmp_path / "blobs"
    shutil.copytree(store.blob_url, folder)
    engine = make_engine(store.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            lost_name = session.execute(select(DirectionSet.blob_uri).join(Layer, Layer.id == DirectionSet.layer_id)
                                        .where(Layer.model_id == MODEL, Layer.name == LAYER)).scalar_one()
    finally:
        engine.dispose()

    with TestClient(create_app(store.settings(page_cache_seconds=0))) as client:  # the original folder: all there
        whole = client.get(f"/api/v1/models/{MODEL}/{LAYER}/0").json()
        assert whole["nearest"]["basis"] == "direction" and whole["has_direction"]
        assert "second-order direction" not in whole["missing"]
    (folder / lost_name[:2] / lost_name[2:4] / lost_name).unlink()
    with TestClient(create_app(store.settings(blob_url=str(folder), page_cache_seconds=0))) as client:
        page = client.get(f"/api/v1/models/{MODEL}/{LAYER}/0").json()
        assert page["nearest"]["basis"] != "direction" and not page["has_direction"]
        assert "the layer's direction set is stored, but missing from the blob store" in page["nearest"]["explanation"]
        assert "second-order direction" in page["missing"]
        assert client.get(f"/models/{MODEL}/{LAYER}/0").status_code == 200

        prompt = client.get("/api/v1/search/prompt", params={"text": "red", "model": MODEL, "layer": LAYER, "k": 100})
        assert prompt.status_code == 200, prompt.text[:300]
        body = prompt.json()
        assert body["results"] == []
        assert any("missing from the blob store" in line and LAYER in line for line in body["missing"])
