"""`microscope demo --no-serve` from nothing: wall and CPU seconds of this checkout's demo
against another revision's, run on the same machine in the same run (alternating, each into
a fresh data folder, nothing shared but the Python environment).

    python benchmarks/demo_time.py [--baseline REV] [--repeats 1] [--images 10000]

The baseline revision is checked out into a temporary git worktree and run through its own
`microscope` entry point (read from its pyproject.toml), so any revision whose dependencies
this environment holds can be timed. Prints one JSON object; `ratio` is the baseline's
median wall time over this checkout's (above 1: this checkout's demo is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def entry_point(checkout: Path) -> str:
    """The `microscope` script's `module:function` in a checkout's pyproject.toml."""
    scripts = tomllib.loads((checkout / "pyproject.toml").read_text())["project"]["scripts"]
    return scripts["microscope"]


def run_demo(checkout: Path, images: int) -> dict:
    module, function = entry_point(checkout).split(":")
    data_dir = Path(tempfile.mkdtemp(prefix="demo-time-"))
    command = [sys.executable, "-c", f"import sys; sys.argv[0] = 'microscope'; from {module} import {function}; {function}()",
               "demo", "--no-serve", "--images", str(images)]
    env = {**os.environ, "PYTHONPATH": str(checkout), "MICROSCOPE_DATA_DIR": str(data_dir)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"the demo of {checkout} failed (exit {result.returncode}):\n{result.stdout[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "steps": len(result.stdout.splitlines())}


def revision(checkout: Path, rev: str = "HEAD") -> str:
    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", rev], capture_output=True, text=True,
                          check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a git revision to time against (default: none)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args()
    checkouts = {"current": ROOT}
    worktree = None
    if args.baseline:
        worktree = Path(tempfile.mkdtemp(prefix="demo-baseline-"))
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.baseline],
                       check=True, capture_output=True)
        checkouts = {"baseline": worktree, **checkouts}
    runs: dict[str, list[dict]] = {name: [] for name in checkouts}
    try:
        for _ in range(args.repeats):
            for name, checkout in checkouts.items():
                runs[name].append(run_demo(checkout, args.images))
                print(json.dumps({name: runs[name][-1]}), file=sys.stderr, flush=True)
    finally:
        if worktree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], capture_output=True)

    def median_wall(name: str) -> float:
        walls = sorted(run["wall_seconds"] for run in runs[name])
        return walls[len(walls) // 2]

    out = {"benchmark": "demo_time", "images": args.images, "cores": os.cpu_count(),
           "revisions": {"current": revision(ROOT), **({"baseline": revision(ROOT, args.baseline)} if args.baseline else {})},
           "runs": runs, "median_wall_seconds": {name: median_wall(name) for name in runs}}
    if args.baseline:
        out["ratio"] = round(median_wall("baseline") / median_wall("current"), 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
