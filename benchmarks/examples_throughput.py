"""The examples pass over all final-layer units versus the bare `encode_image` forward pass.

Target: the pass runs at >= 0.85x the throughput of `encode_image` on the same
images and batch size, data loading and decoding (PNG files through the model's preprocess,
in the same background loader) included in both, on CPU for toy-rn and RN50x4 with random
weights. "The pass" is what a shard worker does per batch: the pre-ReLU capture of the final
layer, spatial maxima, and every accumulator update (top-k, bottom-k, moments, min/max,
fraction active, histogram, conditional-probability reservoirs), plus the calibration batch
that fixes the bins (reused as the first batch, as the local engine does). Checkpoints are
time-based (every 60 s by default) and the final merge/write scales with units x k, not
images, so both are reported separately by `microscope precompute examples` and left out.

    python benchmarks/examples_throughput.py [--arch toy-rn --arch RN50x4] [--repeats 3] [--threads 1]

Prints one JSON object with two clocks: wall time (throughput proper, meaningful on an idle
machine) and process CPU time (work per image, robust when other jobs share the cores;
with --threads 1 it is the single-core throughput). Candidates alternate run by run so
drifts in the machine's load hit both alike; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import time  # noqa: E402

from benchmarks._common import machine, median  # noqa: E402
from precompute import keys as K  # noqa: E402
from precompute.examples import ExampleParams, LayerAccumulator, calibrated_range, ranking_values  # noqa: E402
from precompute.loader import iter_batches  # noqa: E402
from precompute.registry import load_model  # noqa: E402

DEFAULTS = {"toy-rn": (1024, 64), "RN50x4": (48, 8)}  # images, batch


def write_images(folder: Path, count: int) -> list[tuple[int, Path]]:
    from precompute.world import generate

    items = []
    for index in range(count):
        path = folder / f"{index:06d}.png"
        generate(0, index).image.save(path, format="PNG")
        items.append((index, path))
    return items


def measure(arch: str, images: int, batch: int, repeats: int, k: int, folder: Path) -> dict:
    loaded = load_model(arch.lower(), arch)  # seeded random weights
    layer = loaded.spec.final_layer
    items = write_images(folder, images)
    shas = [f"{i:064x}" for i in range(images)]  # any unique keys: the cost is what matters
    sample_keys = torch.from_numpy(K.sample_keys(shas, np.arange(images)))

    def read(path: Path) -> bytes:
        return path.read_bytes()

    def batches():
        return iter_batches(items, batch, read, loaded.preprocess)

    def bare() -> None:
        with torch.inference_mode():
            for b in batches():
                loaded.model.encode_image(b.images)

    def examples() -> None:
        stream = batches()
        first = next(stream)
        values = ranking_values(loaded, first.images, [layer.name])  # calibration batch
        low, high = calibrated_range(values[layer.name][0])
        acc = LayerAccumulator(layer.units, ExampleParams(k=k), low, high, layer.spatial is not None)
        acc.update(*values[layer.name], first.positions, sample_keys[first.positions])
        for b in stream:
            v, a = ranking_values(loaded, b.images, [layer.name])[layer.name]
            acc.update(v, a, b.positions, sample_keys[b.positions])

    bare(), examples()  # warm-up: allocator, kernels, page cache
    candidates = {"encode_image": bare, "examples_pass": examples}
    wall: dict[str, list[float]] = {name: [] for name in candidates}
    cpu: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            w, c = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    bare_rate = images / median(wall["encode_image"])
    pass_rate = images / median(wall["examples_pass"])
    bare_cpu_rate = images / median(cpu["encode_image"])
    pass_cpu_rate = images / median(cpu["examples_pass"])
    return {
        "arch": arch,
        "layer": layer.name,
        "units": layer.units,
        "images": images,
        "batch": batch,
        "k": k,
        "encode_image_img_per_s": round(bare_rate, 2),
        "examples_pass_img_per_s": round(pass_rate, 2),
        "ratio": round(pass_rate / bare_rate, 3),
        "encode_image_img_per_cpu_s": round(bare_cpu_rate, 2),
        "examples_pass_img_per_cpu_s": round(pass_cpu_rate, 2),
        "ratio_cpu_time": round(pass_cpu_rate / bare_cpu_rate, 3),
        "target": 0.85,
        "wall_s": {name: [round(t, 3) for t in values] for name, values in wall.items()},
        "cpu_s": {name: [round(t, 3) for t in values] for name, values in cpu.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help="open_clip architecture (repeatable; default toy-rn and RN50x4)")
    parser.add_argument("--images", type=int, help="images per run (default per arch)")
    parser.add_argument("--batch", type=int, help="batch size (default per arch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for arch in args.arch or ["toy-rn", "RN50x4"]:
        images, batch = DEFAULTS.get(arch, (64, 8))
        with tempfile.TemporaryDirectory() as folder:
            results.append(measure(arch, args.images or images, args.batch or batch, args.repeats, args.k, Path(folder)))
    print(json.dumps({"benchmark": "examples_throughput", "machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
