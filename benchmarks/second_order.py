"""Second-order effects of every neuron of a layer versus the bare `encode_image` of the same batch.

Target: all 3,072 neurons of random ViT-B-32 layer 9 on CPU, batch 8, in at most
2x the time of `encode_image` (the authors' code took about 180 s per image and 6.4 GB).
The image-independent maps are computed once per (model, layer) and reported apart
(`maps_seconds`); peak memory is each mode's maxrss in a fresh subprocess (the model alone,
`encode_image`, the effects). Prints one JSON object.

    python benchmarks/second_order.py [--arch ViT-B-32 --layer transformer.resblocks.9.mlp]
                                      [--also RN50x4:layer4] [--batch 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks._common import interleaved, machine, median  # noqa: E402
from precompute.lens import lens_for, neuron_effects  # noqa: E402
from precompute.registry import load_model  # noqa: E402

TARGET = 2.0


def _setup(arch: str, batch: int, device: str):
    loaded = load_model(arch.lower(), arch, device=device)  # seeded random weights
    size = loaded.spec.image_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    return loaded, images


def _child(arch: str, layer: str, batch: int, mode: str) -> None:
    """One mode in this (fresh) process; prints its peak resident memory in MiB."""
    loaded, images = _setup(arch, batch, "cpu")
    if mode == "encode":
        with torch.inference_mode():
            loaded.model.encode_image(images)
    elif mode == "effects":
        neuron_effects(loaded, images, layer)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _peak_mib(arch: str, layer: str, batch: int, mode: str) -> float:
    result = subprocess.run([sys.executable, __file__, "--child", mode, "--arch", arch, "--layer", layer,
                             "--batch", str(batch)], capture_output=True, text=True, check=True)
    return round(float(result.stdout.strip().splitlines()[-1]), 1)


def measure(arch: str, layer: str, batch: int, repeats: int, device: str, memory: bool) -> dict:
    loaded, images = _setup(arch, batch, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    started = time.perf_counter()
    lens = lens_for(loaded, layer)
    lens.maps(0, 1)  # computes (and caches) every neuron's maps when they fit the budget
    sync()
    maps_seconds = time.perf_counter() - started

    def bare() -> None:
        with torch.inference_mode():
            loaded.model.encode_image(images)

    def effects() -> None:
        neuron_effects(loaded, images, layer)

    bare(), effects()  # warm-up
    times = interleaved({"encode_image": bare, "effects": effects}, repeats, sync)
    shape = neuron_effects(loaded, images, layer).values.shape
    row = {
        "arch": arch,
        "layer": layer,
        "paths": lens.plan.paths,
        "neurons": int(shape[1]),
        "batch": batch,
        "encode_image_s": round(median(times["encode_image"]), 4),
        "effects_s": round(median(times["effects"]), 4),
        "ratio": round(median(times["effects"]) / median(times["encode_image"]), 3),
        "target_ratio_at_most": TARGET,
        "effects_s_per_image": round(median(times["effects"]) / batch, 4),
        "maps_seconds": round(maps_seconds, 2),
        "maps_cached": bool(lens.cache_maps),
    }
    if memory and device == "cpu":
        model_only = _peak_mib(arch, layer, batch, "model")
        row.update(peak_mib_model_only=model_only, peak_mib_encode_image=_peak_mib(arch, layer, batch, "encode"),
                   peak_mib_effects=_peak_mib(arch, layer, batch, "effects"))
        row["effects_extra_mib_over_encode"] = round(row["peak_mib_effects"] - row["peak_mib_encode_image"], 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--layer", default="transformer.resblocks.9.mlp")
    parser.add_argument("--also", action="append", default=[], help="more ARCH:LAYER rows, e.g. RN50x4:layer4")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.arch, args.layer, args.batch, args.child)
        return
    rows = [(args.arch, args.layer)] + [tuple(item.split(":", 1)) for item in args.also]
    results = [measure(arch, layer, args.batch, args.repeats, args.device, not args.no_memory) for arch, layer in rows]
    print(json.dumps({"benchmark": "second_order", "machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
