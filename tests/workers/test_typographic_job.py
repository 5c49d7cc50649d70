"""`microscope precompute typographic-eval`: its rows against an independent computation, the
Done bars of the article's phenomenon on held-out pictures, and SIGKILL + re-run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sqlalchemy import select

from store import migrations
from store.models import TypographicResult
from store.session import make_engine, make_sessionmaker
from tests.workers.precompute_helpers import SINGLE_THREAD_ENV, register_random, store_config

HELD_OUT_SEED = 31


def write_held_out(folder: Path, count: int) -> Path:
    """Held-out pictures of single objects (another seed than the training world's 0)."""
    from precompute.world import COLORS, SHAPES, object_image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([HELD_OUT_SEED, 22])
    for i in range(count):
        object_image(SHAPES[i % 6], list(COLORS)[int(rng.integers(8))], int(rng.integers(1, 3)), rng).image.save(folder / f"{i:04d}.png")
    return folder


def prepare(url: str, folder: Path, count: int, models=("toy-rn",)) -> None:
    from precompute.registry import load_embedded
    from store.blobs import BlobStore
    from workers.datasets import DatasetSource, register_dataset

    migrations.upgrade(url)
    for model in models:
        register_random(url, model, model, loaded=load_embedded(model))
    engine = make_engine(url)
    try:
        register_dataset(make_sessionmaker(engine), BlobStore(str(folder / "blobs")), "held-out",
                         DatasetSource("folder", str(write_held_out(folder / "pictures", count))))
    finally:
        engine.dispose()


def rows(url: str) -> list[tuple]:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            return sorted((r.model_id, r.dataset_id, r.label_set, r.setup, r.kind, r.text, r.target, r.success, r.pixel_cover,
                           r.images) for r in session.execute(select(TypographicResult)).scalars())
    finally:
        engine.dispose()


def test_rows_match_an_independent_computation(tmp_path: Path) -> None:
    from precompute.registry import load_embedded
    from precompute.toy.evaluate import class_text_features, encode_images
    from precompute.typographic import AttackSpec, render_attack
    from precompute.world import SHAPES
    from workers.typographic_job import TypographicRequest, run_typographic

    url = f"sqlite:///{tmp_path / 'm.db'}"
    prepare(url, tmp_path, 36)
    request = TypographicRequest("toy-rn", "held-out", attacks=(AttackSpec("square", "square"), AttackSpec("love", "heart")),
                                 search_pool=("pizza",), attacks_per_batch=2)
    summary = run_typographic(store_config(url, tmp_path), request, show_progress=False)
    assert summary["status"] == "done" and summary["attacks"] == 2 and summary["search_candidates"] == 7
    stored = {(r[4], r[5]): r for r in rows(url)}
    assert len(stored) == 9

    # The same figures from the toy report card's own encoders and the world's shape prompts.
    loaded = load_embedded("toy-rn")
    shapes = F.normalize(class_text_features(loaded).view(8, 6, -1).mean(dim=0), dim=-1)
    from PIL import Image

    pictures = [Image.open(p).convert("RGB") for p in sorted((tmp_path / "pictures").glob("*.png"))]
    clean = (encode_images(loaded, pictures) @ shapes.t()).argmax(dim=1)
    for (kind, text), row in stored.items():
        attacked = [render_attack(p, text) for p in pictures]
        top = (encode_images(loaded, [a.image for a in attacked]) @ shapes.t()).argmax(dim=1)
        assert row[8] == pytest.approx(np.mean([a.pixel_cover for a in attacked]))
        target = SHAPES.index(row[6])
        keep = clean != target
        assert row[9] == int(keep.sum())
        assert row[7] == pytest.approx(float((top[keep] == target).float().mean()))
        if kind == "search":  # no class does better by the article's measure
            for other in range(6):
                others = clean != other
                assert float((top[others] == other).float().mean()) <= row[7] + 1e-9
    assert stored[("attack", "love")][6] == "heart"

    again = run_typographic(store_config(url, tmp_path), request, show_progress=False)
    assert again["status"] == "already done" and {(r[4], r[5]): r for r in rows(url)} == stored


@pytest.mark.slow
@pytest.mark.parametrize("model", ["toy-rn", "toy-vit"])
def test_the_search_finds_attacks_that_work_at_low_pixel_cover(tmp_path: Path, model: str) -> None:
    """The Done bar: on held-out pictures several texts reach >= 50 % success at < 10 % pixel
    cover, and the search finds them with no target given."""
    from precompute.world import COLORS, COMMON_WORDS, NUMBER_WORDS
    from workers.typographic_job import TypographicRequest, run_typographic

    url = f"sqlite:///{tmp_path / 'm.db'}"
    prepare(url, tmp_path, 60, models=(model,))
    pool = (*COLORS, *NUMBER_WORDS, *COMMON_WORDS[:40])
    request = TypographicRequest(model, "held-out", search_pool=pool, attacks_per_batch=16)
    run_typographic(store_config(url, tmp_path), request, show_progress=False)
    found = [r for r in rows(url) if r[4] == "search" and r[7] is not None and r[7] >= 0.5 and r[8] < 0.10]
    print(model, "search hits:", [(r[5], r[6], round(r[7], 3), round(r[8], 4)) for r in found])
    assert len(found) >= 2
    assert sum(r[5] == r[6] for r in found) >= 2  # at least two texts that name their own target


EVAL = ["precompute", "typographic-eval", "--model", "toy-rn", "--dataset", "held-out", "--limit", "24",
        "--search-pool", "none", "--attacks-per-batch", "1", "--batch-size", "32", "--quiet"]


def _env(url: str, folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    env.update(MICROSCOPE_DATA_DIR=str(folder / "data"), MICROSCOPE_DATABASE_URL=url,
               MICROSCOPE_BLOB_URL=str(folder / "blobs"), MICROSCOPE_DEVICE="cpu", **SINGLE_THREAD_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")) if p)
    return env


def _cursor(url: str) -> int:
    from store.models import Job

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(Job.cursor).where(Job.kind == "typographic-eval")).scalar() or 0
    finally:
        engine.dispose()


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_uninterrupted_run(database_url: str, tmp_path: Path) -> None:
    clean_url = f"sqlite:///{tmp_path / 'clean.db'}"
    prepare(clean_url, tmp_path / "clean", 24)
    subprocess.run([sys.executable, "-m", "cli.main", *EVAL], env=_env(clean_url, tmp_path / "clean"), check=True, timeout=600)
    prepare(database_url, tmp_path / "killed", 24)
    env = _env(database_url, tmp_path / "killed")
    process = subprocess.Popen([sys.executable, "-m", "cli.main", *EVAL], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while _cursor(database_url) == 0 and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.5))
    killed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    print("killed mid-run" if killed else "finished before the kill", "at cursor", _cursor(database_url))
    subprocess.run([sys.executable, "-m", "cli.main", *EVAL], env=env, check=True, timeout=600)
    assert rows(database_url) == rows(clean_url) and len(rows(clean_url)) == 12


@pytest.mark.slow
def test_a_real_clip_evaluates_over_stored_imagenet_embeddings(tmp_path: Path) -> None:
    """ImageNet's classes come from the model's stored pool embeddings (no text-tower call; the
    80,000 prompts would take hours here), and the row's success is what those embeddings say."""
    from precompute.text_pools import IMAGENET_SOURCE, pool_texts
    from precompute.typographic import AttackSpec, render_attack
    from store.blobs import BlobStore
    from store.text_pools import add_pool, pool_embeddings
    from workers.datasets import DatasetSource, register_dataset
    from workers.typographic_job import TypographicRequest, run_typographic

    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrations.upgrade(url)
    loaded = register_random(url, "vit", "ViT-B-32")
    texts = pool_texts("imagenet").texts
    random = np.random.default_rng(5).standard_normal((len(texts), 512)).astype(np.float32)
    vectors = random / np.linalg.norm(random, axis=1, keepdims=True)
    engine = make_engine(url)
    try:
        register_dataset(make_sessionmaker(engine), BlobStore(str(tmp_path / "blobs")), "held-out",
                         DatasetSource("folder", str(write_held_out(tmp_path / "pictures", 4))))
        with make_sessionmaker(engine)() as session:
            pool, _ = add_pool(session, "imagenet", texts, IMAGENET_SOURCE)
            pool_embeddings(session, BlobStore(str(tmp_path / "blobs")), "vit", pool, lambda: vectors)
            session.commit()
    finally:
        engine.dispose()
    calls: list[int] = []  # the real text tower, wrapped to count the prompts it encodes
    encode = loaded.model.encode_text
    loaded.model.encode_text = lambda tokens, *a, **k: calls.append(len(tokens)) or encode(tokens, *a, **k)
    request = TypographicRequest("vit", "held-out", labels="imagenet", attacks=(AttackSpec("goldfish", "goldfish"),),
                                 search=False)
    summary = run_typographic(store_config(url, tmp_path), request, show_progress=False, loaded=loaded)
    assert summary["status"] == "done" and calls == []
    [row] = rows(url)
    assert row[2] == "imagenet" and row[5] == "goldfish"

    import open_clip
    from PIL import Image

    index = {t: i for i, t in enumerate(texts)}
    classes = torch.from_numpy(vectors)[[index[name] for name in open_clip.IMAGENET_CLASSNAMES]]
    pictures = [Image.open(p).convert("RGB") for p in sorted((tmp_path / "pictures").glob("*.png"))]
    target = open_clip.IMAGENET_CLASSNAMES.index("goldfish")
    with torch.inference_mode():
        def top(images):
            return (F.normalize(encode_image(loaded, images), dim=-1) @ classes.t()).argmax(dim=1)

        clean, attacked = top(pictures), top([render_attack(p, "goldfish").image for p in pictures])
    keep = clean != target
    assert row[9] == int(keep.sum())
    assert row[7] == pytest.approx(float((attacked[keep] == target).float().mean()) if keep.any() else 0.0)


def encode_image(loaded, images):
    return loaded.model.encode_image(torch.stack([loaded.preprocess(i) for i in images]))
