"""Latency of POST /api/v1/discover, one client and 8 concurrent clients, on a toy model or on a
random-initialised ViT-B-32.

A real server (uvicorn, its own process) on a store with what /discover needs:
- toy-vit: its directions and world-pool decompositions for three MLP layers (tests.discover_store);
- ViT-B-32 (open_clip's architecture, seeded random weights): directions of MLP layers 8-10 (the
  default segmentation layers) from a few world pictures, and layer 10's decompositions over the
  world's vocabulary. Built once into $TMPDIR (MICROSCOPE_BENCH_DEMO_ROOT) and reused.
Each request uploads a picture and asks for concepts + segmentation of a class (toy-vit: "circle",
ViT-B-32: "dog", zero-shot over the world's shapes); toy-vit's concepts come from the server's
default concept layers (its late MLP layers, 3-5) unless --layers names some. The 8 concurrent requests upload 8 different
pictures, as 8 users would. Prints JSON: p50/p90 of single requests, the wall time of 8 concurrent
requests against the single p50 (target: within 3x) and against one request measured right after
each round, and the baseline of
the same server answering GET /healthz (the fixed cost of a request).

With --labels imagenet (ViT-B-32) the zero-shot prediction is over ImageNet's 1,000 classes, read
per request from stored pool embeddings (random unit-length rows written into the built store) as
the live page reads them.

    python -m benchmarks.discover_latency [--model toy-vit|ViT-B-32] [--labels small|imagenet] [--requests 20]
        [--torch-threads 1] [--layers L1,L2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks._common import imagenet_reader, machine, stored_imagenet
from benchmarks._web import DEMO_ROOT

VIT = "ViT-B-32"
VIT_ID = "vit-b-32-random"
VIT_LAYERS = tuple(f"transformer.resblocks.{b}.mlp" for b in (8, 9, 10))
VIT_IMAGES = 24  # pictures the directions are computed from: a stand-in, meaningless for semantics
VIT_TOP = 4  # the k-th largest effect norm is a neuron's threshold
VIT_TERMS = 8
BUILT = "discover-built"


def _pngs(count: int) -> list[bytes]:
    from precompute.world import COLORS, SHAPES, object_image

    colours, shapes = list(COLORS), list(SHAPES)
    out = []
    for i in range(count):
        buffer = io.BytesIO()
        object_image(shapes[i % len(shapes)], colours[(i // len(shapes) + i) % len(colours)], 1,
                     np.random.default_rng([5, i])).image.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def _build_vit_store(url: str, folder: Path) -> None:
    """ViT-B-32 (seeded random weights) with directions for VIT_LAYERS and decompositions of the last."""
    import torch

    from precompute.directions import MeanEffects, TopEffects, directions
    from precompute.discovery import decompose_layer
    from precompute.lens import layer_effects
    from precompute.registry import load_model
    from precompute.text_pools import encode_texts
    from precompute.words import WORLD_VOCABULARY_SOURCE, world_vocabulary
    from precompute.world import generate
    from store.blobs import BlobStore
    from store.directions import LayerDirections, save_layer_directions
    from store.repository import get_layer, unit_ids
    from store.session import make_engine, make_sessionmaker
    from store.text_pools import add_pool, replace_decompositions
    from tests.workers.precompute_helpers import register_random, register_synthetic

    torch.set_num_threads(1)  # on a busy small box, threads that wait for each other's cores cost most
    loaded = load_model(VIT_ID, VIT)
    register_random(url, VIT_ID, VIT, loaded)
    register_synthetic(url, folder, "world", 6)
    pixels = torch.stack([loaded.preprocess(generate(7, i).image) for i in range(VIT_IMAGES)])
    batches = [pixels[i:i + 8] for i in range(0, len(pixels), 8)]
    means: dict[str, MeanEffects] = {}
    for batch in batches:
        for name, value in layer_effects(loaded, batch, VIT_LAYERS).items():
            means.setdefault(name, MeanEffects(*value.values.shape[1:])).update(value.values)
    tops = {name: TopEffects(acc.mean(), VIT_TOP) for name, acc in means.items()}
    position = 0
    for batch in batches:
        for name, value in layer_effects(loaded, batch, VIT_LAYERS).items():
            tops[name].update(value.values, np.arange(position, position + len(batch)))
        position += len(batch)
    texts = tuple(world_vocabulary())
    embeddings = encode_texts(loaded.model, loaded.tokenizer, texts)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        blobs = BlobStore(str(folder / "blobs"))
        add_pool(session, "world", list(texts), WORLD_VOCABULARY_SOURCE)
        for name in VIT_LAYERS:
            r, thresholds = directions(tops[name])
            units = np.arange(r.shape[0], dtype=np.int64)
            layer = get_layer(session, VIT_ID, name)
            save_layer_directions(session, blobs, layer.id, LayerDirections(
                units, r, tops[name].mean, thresholds, "second-order", "world", VIT_IMAGES))
            if name != VIT_LAYERS[-1]:
                continue
            coefficients = decompose_layer(r, embeddings, VIT_TERMS)
            ids = unit_ids(session, layer.id)
            rows = []
            for i, unit in enumerate(units):
                nonzero = np.nonzero(coefficients[i])[0]
                ranked = sorted(nonzero, key=lambda j: (-abs(float(coefficients[i, j])), j))
                rows += [{"unit_id": ids[int(unit)], "rank": rank, "text": texts[j], "coefficient": float(coefficients[i, j]),
                          "score": None} for rank, j in enumerate(ranked)]
            replace_decompositions(session, "world", list(ids.values()), rows)
        session.commit()
    engine.dispose()


def _store(model: str, tmp: Path) -> Path:
    """The data folder of a migrated store for `model` (ViT-B-32's is built once and kept)."""
    from store import migrations

    if model == VIT:
        data_dir = DEMO_ROOT / "discover-vit-b-32"
        if not (data_dir / BUILT).exists():
            shutil.rmtree(data_dir, ignore_errors=True)
            data_dir.mkdir(parents=True)
            url = f"sqlite:///{data_dir / 'microscope.db'}"
            migrations.upgrade(url)
            began = time.perf_counter()
            _build_vit_store(url, data_dir)
            (data_dir / BUILT).write_text(f"{time.perf_counter() - began:.0f} s\n")
        return data_dir
    from tests.discover_store import prepare_discover_store

    data_dir = tmp / "data"
    data_dir.mkdir()
    url = f"sqlite:///{data_dir / 'microscope.db'}"
    migrations.upgrade(url)
    prepare_discover_store(url, data_dir)
    return data_dir


VIT_LABELS = ("cat", "dog", "pizza", "car", "iPod")


def _service_run(data_dir: Path, requests: int, rounds: int, torch_threads: int, imagenet: bool = False) -> dict:
    """ViT-B-32 through the app's model service in this process: the zero-shot prediction is over
    five user labels, or (`imagenet`) over ImageNet's classes read from stored embeddings per
    request. The other store reads and the page around the answer are the toy model's (a few ms;
    see its HTTP figures)."""
    import torch
    from PIL import Image

    from app.live_discovery import _Knowledge
    from app.model_service import ModelService
    from precompute.discovery import DiscoverRequest
    from precompute.zeroshot import label_set
    from store.directions import latest_direction_sets
    from store.loading import load_registered
    from store.session import make_engine, make_sessionmaker

    if torch_threads:
        torch.set_num_threads(torch_threads)
    engine = make_engine(f"sqlite:///{data_dir / 'microscope.db'}")
    sessions = make_sessionmaker(engine)
    from store import queries
    from store.blobs import BlobStore

    with sessions() as session:
        layers = {l["name"]: l for l in queries.layers_of(session, [VIT_ID])[VIT_ID]}
        rows = latest_direction_sets(session, [layers[name]["id"] for name in VIT_LAYERS])
        blobs = BlobStore(str(data_dir / "blobs"))
        fingerprints = queries.decomposition_fingerprints(session, [layers[VIT_LAYERS[-1]]["id"]])
        knowledge = _Knowledge()
        seg = tuple(knowledge.get(session, blobs, layers[n], rows[layers[n]["id"]], False) for n in VIT_LAYERS)
        concept = layers[VIT_LAYERS[-1]]
        concepts = knowledge.get(session, blobs, concept, rows[concept["id"]], True, fingerprints[concept["id"]])

    def load(model_id: str):
        with sessions() as session:
            return load_registered(session, model_id, device="cpu")

    service = ModelService(load, max_queue=64, max_batch=8, timeout=600)
    url, blob_url = f"sqlite:///{data_dir / 'microscope.db'}", str(data_dir / "blobs")
    if imagenet:
        stored_imagenet(url, blob_url, VIT_ID, 512)
        labels = imagenet_reader(url, blob_url, VIT_ID)
    else:
        small = label_set(labels=list(VIT_LABELS))
        labels = lambda: small  # noqa: E731
    pictures = [Image.open(io.BytesIO(png)).convert("RGB") for png in _pngs(8)]
    try:
        def one(picture=pictures[0]) -> float:
            began = time.perf_counter()
            service.discover(VIT_ID, picture, DiscoverRequest(concepts, seg, "dog", labels(), ()))
            return time.perf_counter() - began

        for picture in pictures[:2]:
            one(picture)  # load the model, the lens maps, the class embeddings
        singles = sorted(one() for _ in range(requests))

        def eight() -> float:
            barrier = threading.Barrier(8)

            def client(i: int) -> None:
                barrier.wait()
                one(pictures[i])

            threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
            began = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return time.perf_counter() - began

        measured, alone = [], []
        for _ in range(rounds):
            measured.append(eight())
            alone.append(one())
    finally:
        service.close()
        engine.dispose()
    return {"singles": singles, "rounds": measured, "alone": alone, "path": "model service, in process",
            "labels": "imagenet, stored" if imagenet else "5 user labels"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="toy-vit", choices=["toy-vit", VIT])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of 8 concurrent requests")
    parser.add_argument("--workers", type=int, default=1, help="server processes (toy-vit over HTTP)")
    parser.add_argument("--labels", choices=["small", "imagenet"], default="small",
                        help="ViT-B-32's zero-shot labels: five user labels, or ImageNet's read from stored embeddings")
    parser.add_argument("--layers", default="", help="toy-vit: the concept layers to post (default: the server's, the "
                        "late MLP layers with directions and decompositions)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="the server's MICROSCOPE_TORCH_THREADS (0: torch's default, every core)")
    args = parser.parse_args()
    model_id, class_name = (VIT_ID, "dog") if args.model == VIT else ("toy-vit", "circle")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = _store(args.model, Path(tmp))
        if args.model == VIT:
            run = _service_run(data_dir, args.requests, args.rounds, args.torch_threads, args.labels == "imagenet")
            singles, rounds, alone, health = run["singles"], run["rounds"], run["alone"], None
            labels = run["labels"]
        else:
            labels = "world-shapes"
            singles, rounds, alone, health = _http_run(data_dir, Path(tmp), model_id, class_name, args)
    p50 = statistics.median(singles)
    ratios = sorted(r / a for r, a in zip(rounds, alone))
    print(json.dumps({
        "benchmark": "discover_latency", "model": model_id, "arch": args.model, "machine": machine(),
        "path": "model service, in process" if args.model == VIT else "HTTP, uvicorn", "labels": labels,
        "load_average_1m": round(os.getloadavg()[0], 2), "torch_threads": args.torch_threads, "workers": args.workers,
        "concept_layers": args.layers or "default",
        "single_p50_s": round(p50, 4), "single_p90_s": round(singles[int(0.9 * (len(singles) - 1))], 4),
        "single_min_s": round(singles[0], 4),
        "concurrent8_wall_s": round(statistics.median(rounds), 4),
        "concurrent8_over_single": round(statistics.median(rounds) / p50, 3),
        # each round against the one request measured right after it (load drifts between them)
        "concurrent8_over_adjacent_single": round(statistics.median(ratios), 3),
        "concurrent8_over_adjacent_single_range": [round(ratios[0], 3), round(ratios[-1], 3)],
        "healthz_p50_s": round(statistics.median(health), 4) if health else None,
        "targets": {"single_p50_s": 2.0 if args.model == VIT else 0.2, "concurrent8_over_single": 3.0},
    }, indent=1))


def _http_run(data_dir: Path, tmp: Path, model_id: str, class_name: str, args) -> tuple:
    """Single and concurrent POST /api/v1/discover against uvicorn serving the store."""
    from tests.server import served

    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    env.update(MICROSCOPE_DATA_DIR=str(data_dir), MICROSCOPE_DEVICE="cpu", MICROSCOPE_LIVE_RATE_LIMIT="100000/minute",
               MICROSCOPE_TORCH_THREADS=str(args.torch_threads))
    pngs = _pngs(8)
    with served(env, tmp / "server.log", uvicorn_args=["--workers", str(args.workers)]) as base, httpx.Client(base_url=base, timeout=600) as http:
        def one(png: bytes = pngs[0], client: httpx.Client = http) -> float:
            began = time.perf_counter()
            fields = {"model": model_id, "class_name": class_name, "labels": "world-shapes"}
            if args.layers:
                fields["layers"] = args.layers
            r = client.post("/api/v1/discover", data=fields, files={"file": ("c.png", png, "image/png")})
            r.raise_for_status()
            return time.perf_counter() - began

        for png in pngs[:3]:
            one(png)  # load the model, the directions, the class embeddings
        singles = sorted(one() for _ in range(args.requests))
        health = []
        for _ in range(args.requests):
            began = time.perf_counter()
            http.get("/healthz")
            health.append(time.perf_counter() - began)

        def eight() -> float:
            barrier = threading.Barrier(8)
            clients = [httpx.Client(base_url=base, timeout=600) for _ in range(8)]

            def client(i: int) -> None:
                barrier.wait()
                one(pngs[i], clients[i])

            threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
            began = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - began
            for c in clients:
                c.close()
            return wall

        rounds, alone = [], []
        for _ in range(args.rounds):  # each round of 8 next to one request alone
            rounds.append(eight())
            alone.append(one())
    return singles, rounds, alone, health


if __name__ == "__main__":
    main()
