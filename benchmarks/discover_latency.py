"""Latency of POST /api/v1/discover on a toy model, one client and 8 concurrent clients.

A real server (uvicorn, its own process) on a store with toy-vit's directions and world-pool
decompositions for three MLP layers (tests.discover_store), the picture uploaded each time,
concepts + segmentation for "circle". Prints JSON: p50/p90 of single requests, the wall time of
8 concurrent requests against one request's p50 (target: within 3x), and the baseline of the
same server answering GET /healthz (the fixed cost of a request).

    python -m benchmarks.discover_latency [--requests 20]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from benchmarks._common import machine


def _png() -> bytes:
    from precompute.world import object_image

    out = io.BytesIO()
    object_image("circle", "red", 1, np.random.default_rng([5, 5])).image.save(out, format="PNG")
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    from store import migrations
    from tests.discover_store import MODEL, prepare_discover_store
    from tests.server import served

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        url = f"sqlite:///{data_dir / 'microscope.db'}"
        migrations.upgrade(url)
        prepare_discover_store(url, data_dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
        env.update(MICROSCOPE_DATA_DIR=str(data_dir), MICROSCOPE_DEVICE="cpu", MICROSCOPE_LIVE_RATE_LIMIT="100000/minute")
        png = _png()
        with served(env, Path(tmp) / "server.log") as base, httpx.Client(base_url=base, timeout=120) as http:
            def one() -> float:
                began = time.perf_counter()
                r = http.post("/api/v1/discover", data={"model": MODEL, "class_name": "circle"},
                              files={"file": ("c.png", png, "image/png")})
                r.raise_for_status()
                return time.perf_counter() - began

            for _ in range(3):
                one()  # load the model, the directions, the class embeddings
            singles = sorted(one() for _ in range(args.requests))
            health = []
            for _ in range(args.requests):
                began = time.perf_counter()
                http.get("/healthz")
                health.append(time.perf_counter() - began)
            concurrent = []
            for _ in range(3):
                began = time.perf_counter()
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(lambda _: one(), range(8)))
                concurrent.append(time.perf_counter() - began)
        p50 = statistics.median(singles)
        print(json.dumps({
            "benchmark": "discover_latency", "model": MODEL, "machine": machine(),
            "single_p50_s": round(p50, 4), "single_p90_s": round(singles[int(0.9 * (len(singles) - 1))], 4),
            "concurrent8_wall_s": round(statistics.median(concurrent), 4),
            "concurrent8_over_single": round(statistics.median(concurrent) / p50, 3),
            "healthz_p50_s": round(statistics.median(health), 4),
            "targets": {"single_p50_s": 0.2, "concurrent8_over_single": 3.0},
        }, indent=1))


if __name__ == "__main__":
    main()
