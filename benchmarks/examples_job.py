"""The whole examples job, as `microscope demo` runs it, versus the bare `encode_image` pass.

Target: the whole job (planning, calibration, the streaming pass, the merge and the writes of
every final-layer unit's examples (with their crop boxes), buckets and statistics into a real SQLite store)
runs at >= 0.6x the throughput of `encode_image` over the same images, batch size and loader
(PNG blobs decoded and preprocessed in the background), for toy-rn and toy-vit on the demo's
synthetic world.

    python benchmarks/examples_job.py [--images 10000] [--arch toy-rn --arch toy-vit] [--threads N] [--before DIR]

Each job runs in a fresh copy of a store holding only the registered dataset and models, in
a subprocess of its own that times just the job. `--before DIR` also runs the job of another
checkout of the project (e.g. `git worktree add DIR <commit>`) on its own copy, for a
before/after figure of the write phase. The write phase is reported as the units written per
second of what follows the pass (`seconds - pass_seconds` of the job's summary: the merge
and the writes, plus planning and calibration, which are small), so that any version's
summary gives it the same way.

Prints one JSON object with two clocks, as examples_throughput.py does: wall time (meaningful
on an idle machine) and process CPU time (work per image, robust when other jobs share the
cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine  # noqa: E402

DATASET = "synthetic-world"

# Runs in a subprocess with the checkout under test first on sys.path.
_JOB = """
import json, sys, time
from precompute.registry import load_embedded
from workers.engines import StoreConfig
from workers.examples_job import request_from_options, run_examples

import torch

arch, database_url, blob_url, batch, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if threads:
    torch.set_num_threads(threads)
loaded = load_embedded(arch)
request = request_from_options(model_id=arch, dataset_id="{dataset}", layers=(loaded.spec.final_layer.name,),
                               batch_size=batch)
wall, cpu = time.perf_counter(), time.process_time()
summary = run_examples(StoreConfig(database_url, blob_url), request, show_progress=False, loaded=loaded)
summary.update(job_wall_s=time.perf_counter() - wall, job_cpu_s=time.process_time() - cpu,
               units=loaded.spec.final_layer.units)
print("SUMMARY " + json.dumps(summary))
""".replace("{dataset}", DATASET)


def build_store(folder: Path, images: int, archs: list[str]) -> None:
    """The demo's dataset (seed 0, default world) and models, registered in a SQLite store."""
    from cli.demo import DEMO_WORLD_SEED
    from precompute.registry import load_embedded
    from precompute.world import WorldConfig, write_dataset
    from store import migrations
    from store.blobs import BlobStore
    from store.loading import register
    from store.session import make_engine, make_sessionmaker
    from workers.datasets import DatasetSource, register_dataset

    url = f"sqlite:///{folder / 'store' / 'microscope.db'}"
    migrations.upgrade(url, "head")
    write_dataset(folder / "images", images, DEMO_WORLD_SEED, WorldConfig())
    engine = make_engine(url)
    try:
        sessions = make_sessionmaker(engine)
        register_dataset(sessions, BlobStore(str(folder / "store" / "blobs")), DATASET,
                         DatasetSource("folder", str(folder / "images")))
        with sessions() as session:
            for arch in archs:
                register(session, load_embedded(arch))
            session.commit()
    finally:
        engine.dispose()


def bare_encode(folder: Path, arch: str, batch: int) -> dict:
    """decode + preprocess (the same loader) + encode_image over the store's images."""
    import torch

    from precompute.loader import iter_batches
    from precompute.registry import load_embedded
    from store import repository
    from store.blobs import BlobStore
    from store.session import make_engine, make_sessionmaker

    engine = make_engine(f"sqlite:///{folder / 'store' / 'microscope.db'}")
    try:
        with make_sessionmaker(engine)() as session:
            items = repository.dataset_items(session, DATASET)
    finally:
        engine.dispose()
    blobs = BlobStore(str(folder / "store" / "blobs"))
    loaded = load_embedded(arch)
    pairs = [(item[0], item[3]) for item in items]
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for b in iter_batches(pairs, batch, blobs.get, loaded.preprocess):
            loaded.model.encode_image(b.images)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "images": len(pairs)}


def run_job(tree: Path, base: Path, arch: str, batch: int, threads: int) -> dict:
    """The whole job of the checkout `tree`, in a fresh copy of the base store."""
    with tempfile.TemporaryDirectory(dir=base.parent) as scratch:
        store = Path(scratch) / "store"
        shutil.copytree(base / "store", store)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p)}
        result = subprocess.run([sys.executable, "-c", _JOB, arch, f"sqlite:///{store / 'microscope.db'}", str(store / "blobs"),
                                 str(batch), str(threads)],
                                cwd=tree, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"the job of {tree} failed:\n{result.stderr[-4000:]}")
        line = next(line for line in result.stdout.splitlines() if line.startswith("SUMMARY "))
        return json.loads(line.removeprefix("SUMMARY "))


def _job_figures(job: dict, images: int) -> dict:
    after_pass = job["seconds"] - job["pass_seconds"]
    return {
        "img_per_s": round(images / job["job_wall_s"], 2),
        "img_per_cpu_s": round(images / job["job_cpu_s"], 2),
        "pass_s": job["pass_seconds"],
        "after_pass_s": round(after_pass, 2),
        "write_units_per_s": round(job["units"] / after_pass, 2),
        "wall_s": round(job["job_wall_s"], 2),
        "cpu_s": round(job["job_cpu_s"], 2),
        **{key: job[key] for key in ("write_seconds", "images_decoded", "crops_encoded") if key in job},
    }


def measure(arch: str, base: Path, batch: int, threads: int, before: Path | None) -> dict:
    bare = bare_encode(base, arch, batch)
    job = run_job(ROOT, base, arch, batch, threads)
    images = bare["images"]
    bare_rate, bare_cpu_rate = images / bare["wall_s"], images / bare["cpu_s"]
    after = _job_figures(job, images)
    out = {
        "arch": arch,
        "layer": job["layers"][0],
        "units": job["units"],
        "images": images,
        "batch": batch,
        "encode_image_img_per_s": round(bare_rate, 2),
        "encode_image_img_per_cpu_s": round(bare_cpu_rate, 2),
        "job": after,
        "ratio": round(after["img_per_s"] / bare_rate, 3),
        "ratio_cpu_time": round(after["img_per_cpu_s"] / bare_cpu_rate, 3),
        "target": 0.6,
    }
    if before is not None:
        old = _job_figures(run_job(before, base, arch, batch, threads), images)
        out["before"] = old
        out["ratio_before"] = round(old["img_per_s"] / bare_rate, 3)
        out["ratio_cpu_time_before"] = round(old["img_per_cpu_s"] / bare_cpu_rate, 3)
        out["write_speedup"] = round(after["write_units_per_s"] / old["write_units_per_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=["toy-rn", "toy-vit"],
                        help="embedded model (repeatable; default both)")
    parser.add_argument("--images", type=int, default=10_000, help="images of the synthetic world (default 10000, the demo's)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64, the job's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--before", type=Path, help="another checkout of the project whose job to run too")
    args = parser.parse_args()
    if args.images < 1:
        parser.error("--images must be at least 1")
    if args.before is not None and not (args.before / "workers" / "examples_job.py").is_file():
        parser.error(f"--before {args.before}: not a checkout of this project")
    archs = args.arch or ["toy-rn", "toy-vit"]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder) / "base"
        build_store(base, args.images, archs)
        results = [measure(arch, base, args.batch, args.threads, args.before) for arch in archs]
    print(json.dumps({"benchmark": "examples_job", "machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
