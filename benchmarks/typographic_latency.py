"""The typographic probe's live path: render the attack, then before + after + the unit readout
through the model service (batched, bounded queue), for one client and for 8 at once.

Targets: toy models p50 <= 100 ms on CPU; random-initialised RN50x4 p50 <= 2 s on CPU;
8 concurrent requests (8 different pictures) finish within 3x one request's time. Baseline, measured in the same run:
the bare encode_image of the two pictures (clean and attacked). Prints one JSON object.

With --labels imagenet a real CLIP classifies over ImageNet's 1,000 classes, read per request
from stored pool embeddings (random unit-length rows in a store built in a temporary folder) as
the live pages read them; otherwise over five labels of the user's, encoded once and cached.

    python benchmarks/typographic_latency.py [--model toy-rn --model toy-vit --model RN50x4 --model ViT-B-32]
        [--labels small|imagenet] [--requests 20] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from app.model_service import ModelService  # noqa: E402
from benchmarks._common import imagenet_reader, machine, stored_imagenet  # noqa: E402
from precompute.typographic import ProbeItem, render_attack  # noqa: E402
from precompute.zeroshot import label_set  # noqa: E402

TOYS = ("toy-rn", "toy-vit")


def loader(device: str):
    def load(model_id: str):
        from precompute.registry import load_embedded, load_model

        if model_id in TOYS:
            return load_embedded(model_id, device=device)
        return load_model(model_id.lower(), model_id, device=device)  # seeded random weights

    return load


def picture(model_id: str, size: int, index: int = 0):
    """The probe's picture; 8 concurrent clients send 8 different ones, as 8 users would."""
    from precompute.world import COLORS, SHAPES, object_image

    colours = list(COLORS)
    image = object_image("circle", colours[(colours.index("blue") + index) % len(colours)], 1,
                         np.random.default_rng([22, 9 + index])).image
    return image if model_id in TOYS else image.resize((size, size))


def one(service: ModelService, model_id: str, layer: str, image, labels) -> float:
    """One request; `labels` is a label set, or what reads one from the store per request."""
    start = time.perf_counter()
    attacked = render_attack(image, "square")
    service.typographic(model_id, layer, ProbeItem(image, attacked.image), labels() if callable(labels) else labels)
    return time.perf_counter() - start


def stored_labels(model_id: str, device: str, folder: str):
    """A store in `folder` with the model registered and ImageNet's embeddings under it, and its reader."""
    from store import migrations
    from store.loading import register
    from store.session import make_engine, make_sessionmaker

    url, blob_url = f"sqlite:///{folder}/microscope.db", f"{folder}/blobs"
    migrations.upgrade(url)
    loaded = loader(device)(model_id)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        register(session, loaded)
    engine.dispose()
    stored_imagenet(url, blob_url, loaded.model_id, int(loaded.model.visual.output_dim))
    return imagenet_reader(url, blob_url, loaded.model_id)


def measure(model_id: str, requests: int, device: str, rounds_of_eight: int = 3, imagenet: bool = False) -> dict:
    from precompute.architectures import architecture

    spec = architecture(model_id)
    layer = spec.final_layer.name
    folder = tempfile.TemporaryDirectory()
    if model_id in TOYS:
        labels = label_set("world-shapes")
    elif imagenet:
        labels = stored_labels(model_id, device, folder.name)
    else:
        labels = label_set(labels=["cat", "dog", "pizza", "car", "iPod"])
    service = ModelService(loader(device), max_queue=64, max_batch=8, timeout=600)
    try:
        image = picture(model_id, spec.image_size)
        images = [picture(model_id, spec.image_size, i) for i in range(8)]
        for _ in range(2):  # load the model, build the class embeddings, warm up
            one(service, model_id, layer, image, labels)
        loaded = service._models[model_id]
        pixels = torch.stack([loaded.preprocess(image), loaded.preprocess(render_attack(image, "square").image)]).to(loaded.device)

        def bare_encode() -> float:
            start = time.perf_counter()
            with torch.inference_mode():
                loaded.model.encode_image(pixels)
            if str(loaded.device).startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter() - start

        # Interleaved with the baseline, so that load from other processes falls on both alike.
        single, bare = [], []
        for _ in range(requests):
            single.append(one(service, model_id, layer, image, labels))
            bare.append(bare_encode())

        def concurrent() -> float:
            barrier = threading.Barrier(8)
            times: list[float] = []

            def client(i: int) -> None:
                barrier.wait()
                times.append(one(service, model_id, layer, images[i], labels))

            threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return time.perf_counter() - start

        rounds, ones = [], []
        for _ in range(rounds_of_eight):  # each round of 8 next to one request alone
            rounds.append(concurrent())
            ones.append(one(service, model_id, layer, image, labels))
    finally:
        service.close()
        folder.cleanup()
    p50 = statistics.median(single)
    eight = statistics.median(rounds)
    ratios = sorted(r / o for r, o in zip(rounds, ones))
    return {
        "model": model_id, "layer": layer, "device": device, "requests": requests,
        "labels": "world-shapes" if model_id in TOYS else ("imagenet, stored" if imagenet else "5 user labels"),
        "p50_ms": round(p50 * 1000, 1), "p90_ms": round(float(np.percentile(single, 90)) * 1000, 1),
        "eight_concurrent_ms": round(eight * 1000, 1), "eight_over_one": round(statistics.median(ratios), 2),
        "eight_over_one_range": [round(ratios[0], 2), round(ratios[-1], 2)], "eight_over_p50": round(eight / p50, 2),
        "baseline_encode_two_ms": round(statistics.median(bare) * 1000, 1),
        "over_baseline": round(p50 / statistics.median(bare), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", dest="models")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 8 concurrent requests")
    parser.add_argument("--labels", choices=["small", "imagenet"], default="small",
                        help="a real CLIP's label set: five user labels, or ImageNet's read from stored embeddings")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, as a server's MICROSCOPE_TORCH_THREADS (0: torch's default, every core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(m, args.requests, args.device, args.rounds, args.labels == "imagenet") for m in (args.models or ["toy-rn", "toy-vit", "RN50x4"])]
    print(json.dumps({"benchmark": "typographic_latency", "machine": machine(), "torch_threads": torch.get_num_threads(),
                      "load_average_1m": round(os.getloadavg()[0], 2), "results": rows}, indent=1))


if __name__ == "__main__":
    main()
