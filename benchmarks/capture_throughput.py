"""Activation capture of all final-layer units versus the bare `encode_image` forward pass.

Target: capture throughput >= 0.9x encode_image on CPU for RN50x4 and ViT-B-32,
random weights (compute is what matters), same batches. Prints one JSON object.

    python benchmarks/capture_throughput.py [--arch RN50x4 --arch ViT-B-32] [--batch 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks._common import interleaved, machine, median  # noqa: E402
from precompute.capture import capture  # noqa: E402
from precompute.registry import load_model  # noqa: E402


def measure(arch: str, batch: int, repeats: int, device: str) -> dict:
    loaded = load_model(arch.lower(), arch, device=device)  # seeded random weights
    size = loaded.spec.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    final = loaded.spec.final_layer.name
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def bare() -> None:
        with torch.inference_mode():
            loaded.model.encode_image(images)

    def captured() -> None:
        capture(loaded, images, final)

    bare(), captured()  # warm-up: allocator, kernels, lazy init
    times = interleaved({"encode_image": bare, "capture": captured}, repeats, sync)
    bare_rate = batch / median(times["encode_image"])
    capture_rate = batch / median(times["capture"])
    return {
        "arch": arch,
        "layer": final,
        "units": loaded.spec.final_layer.units,
        "batch": batch,
        "encode_image_img_per_s": round(bare_rate, 2),
        "capture_img_per_s": round(capture_rate, 2),
        "ratio": round(capture_rate / bare_rate, 3),
        "target": 0.9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help="open_clip architecture (repeatable)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    results = [measure(arch, args.batch, args.repeats, args.device) for arch in (args.arch or ["RN50x4", "ViT-B-32"])]
    print(json.dumps({"benchmark": "capture_throughput", "machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
