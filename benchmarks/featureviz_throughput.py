"""Feature visualization: unit-steps per second for a batch of units in one optimisation,
against a loop that renders the same units one at a time, same device and settings, in one
run (interleaved, so the machine's load hits both alike).

Target: batch of 64 >= 5x the loop on CPU for toy-rn `layer4`; random-initialised
RN50x4 `layer4` and ViT-B-32 `transformer.resblocks.11.mlp` reported too (smaller batches,
fewer steps on CPU). With `--project` on a GPU: the time to render all 2,560 units of RN50x4
`layer4` at 512 steps and its native 288 pixels, measured on one full batch and projected.

Steps are timed in steady state (`redirect_steps=0`; the redirected ReLU runs for only 16 of
512 steps in a real render). Prints one JSON object.

    python benchmarks/featureviz_throughput.py [--device cpu] [--steps 8] [--repeats 2] [--quick]
    python benchmarks/featureviz_throughput.py --device cuda --project
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks._common import interleaved, machine, median  # noqa: E402
from precompute.featureviz.render import RenderItem, RenderSettings, auto_batch_size, render  # noqa: E402
from precompute.registry import load_embedded, load_model  # noqa: E402


def _load(arch: str, device: str):
    if arch.startswith("toy-"):
        return load_embedded(arch, device=device)
    return load_model(arch.lower(), arch, device=device)  # seeded random weights


def measure(arch: str, layer: str, units: int, steps: int, repeats: int, device: str) -> dict:
    loaded = _load(arch, device)
    items = [RenderItem(u) for u in range(units)]
    settings = RenderSettings(steps=steps, redirect_steps=0, batch_size=units)
    single = RenderSettings(steps=steps, redirect_steps=0, batch_size=1)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def batched() -> None:
        render(loaded, layer, items, settings)

    def loop() -> None:
        for item in items:
            render(loaded, layer, [item], single)

    render(loaded, layer, items[:2], RenderSettings(steps=1, batch_size=2))  # warm-up
    cpu_start = time.process_time()
    times = interleaved({"batch": batched, "loop": loop}, repeats, sync)
    work = units * steps
    batch_rate, loop_rate = work / median(times["batch"]), work / median(times["loop"])
    return {
        "arch": arch, "layer": layer, "units": units, "steps": steps, "repeats": repeats, "device": device,
        "image_size": loaded.spec.image_size,
        "batch_unit_steps_per_s": round(batch_rate, 2),
        "loop_unit_steps_per_s": round(loop_rate, 2),
        "ratio": round(batch_rate / loop_rate, 2),
        "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "process_cpu_seconds": round(time.process_time() - cpu_start, 1),
    }


def project(device: str, steps_measured: int) -> dict:
    """RN50x4 layer4, 2,560 units at 512 steps, from one full (automatic) batch."""
    loaded = _load("RN50x4", device)
    layer = "layer4"
    batch = auto_batch_size(loaded, [layer], loaded.spec.image_size)
    items = [RenderItem(u) for u in range(batch)]
    render(loaded, layer, items[:2], RenderSettings(steps=2, batch_size=2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    render(loaded, layer, items, RenderSettings(steps=steps_measured, batch_size=batch))
    sync()
    seconds = time.perf_counter() - start
    per_step = seconds / steps_measured
    batches = -(-2560 // batch)
    total = per_step * 512 * batches
    return {"arch": "RN50x4", "layer": layer, "units": 2560, "image_size": 288, "batch": batch,
            "steps_measured": steps_measured, "seconds_per_batch_step": round(per_step, 4),
            "projected_minutes_2560_units_512_steps": round(total / 60, 1), "target_minutes": 30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="toy-rn only")
    parser.add_argument("--project", action="store_true", help="also project RN50x4 layer4 at 512 steps (a GPU job)")
    args = parser.parse_args()
    rows = [measure("toy-rn", "layer4", 64, args.steps, args.repeats, args.device)]
    print(json.dumps({"row": rows[-1]}), file=sys.stderr, flush=True)  # each row as soon as it is measured
    if not args.quick:
        big = 64 if args.device == "cuda" else 8
        big_steps = args.steps if args.device == "cuda" else 2
        for arch, layer in (("RN50x4", "layer4"), ("ViT-B-32", "transformer.resblocks.11.mlp")):
            rows.append(measure(arch, layer, big, big_steps, 1, args.device))
            print(json.dumps({"row": rows[-1]}), file=sys.stderr, flush=True)
    out = {"benchmark": "featureviz_throughput", "machine": machine(), "rows": rows,
           "target": "toy-rn batch of 64 >= 5x the per-unit loop on CPU",
           "meets_target": rows[0]["ratio"] >= 5.0}
    if args.project:
        out["projection"] = project(args.device, 16 if args.device == "cuda" else 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
