"""Latency of the unit page (HTML) at 32 concurrent clients: p50 and p99, and errors.

Target: 0 errors and p99 <= 500 ms at 32 concurrent keep-alive clients, on SQLite and on
Postgres, on the demo's store (`--store demo`: what `microscope demo` builds, 10,000 images,
every unit of toy-rn's layer4 and toy-vit's last MLP layer, 1,280 pages). The clients cycle
through every unit page of the store's computed layers; `--store sample` uses the test suite's
small made-up store instead. The server runs as `microscope serve --workers N` on loopback;
the load comes from another process (wrk, or benchmarks/loadgen.py where wrk is missing),
after a warm-up that is not counted. The figure is the steady state, so the warm-up must let
every worker build every page once: a page not yet cached costs about 25 ms of CPU to build
and render (16 statements, a 167 KB page), a cached one about 2 ms, and each worker process
keeps its own cache; on 2 cores, 1,280 demo pages and 2 workers take about 2.5 minutes
(`--warmup 150`). A shorter warm-up measures mostly first views. Prints one JSON object.

    python benchmarks/web_latency.py --store demo --backend sqlite --backend postgres \
        --duration 30 --warmup 150 --connections 32 --workers 2

The demo stores are built on first use into $TMPDIR/web-demo-sqlite and web-demo-postgres
(Postgres schema web_demo) and reused; delete a folder to rebuild it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._web import DEMO_SCHEMA, load_tool, machine, run_load, serve, serve_demo, server_cpu_seconds  # noqa: E402

TARGET_P99_MS = 500.0


def measure(backend: str, args: argparse.Namespace, tool: str) -> dict:
    if args.store == "demo":
        server_cm = serve_demo(backend, args.workers, args.launcher, args.demo_dir, args.demo_schema)
    else:
        server_cm = serve(backend)
    with server_cm as server:
        if args.warmup > 0:
            run_load(server.url, server.unit_paths, connections=args.connections, duration=args.warmup, tool=tool)
        cpu_before = server_cpu_seconds(server.pid)
        result = run_load(server.url, server.unit_paths, connections=args.connections, duration=args.duration, tool=tool)
        cpu_after = server_cpu_seconds(server.pid)
        pages = len(server.unit_paths)
    cpu_ms = None if cpu_before is None or cpu_after is None else (cpu_after - cpu_before) * 1000 / max(result["requests"], 1)
    p99_ms = result["p99"] * 1000
    return {
        "backend": backend,
        "pages": pages,
        "requests": result["requests"],
        "rps": round(result["rps"], 1),
        "p50_ms": round(result["p50"] * 1000, 2),
        "p90_ms": round(result["p90"] * 1000, 2),
        "p99_ms": round(p99_ms, 2),
        "errors": result["errors"],
        "server_cpu_ms_per_request": None if cpu_ms is None else round(cpu_ms, 2),
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": result["errors"] == 0 and p99_ms <= TARGET_P99_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("--store", choices=["sample", "demo"], default="sample",
                        help="The test suite's made-up store, or the demo's (built once, then reused).")
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds of load.")
    parser.add_argument("--warmup", type=float, default=10.0, help="Seconds of load before measuring, not counted.")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="Server processes, `microscope serve --workers` (demo store).")
    parser.add_argument("--launcher", choices=["microscope", "uvicorn"], default="microscope",
                        help="Start the server with `microscope serve` or with uvicorn's command line (demo store).")
    parser.add_argument("--demo-dir", type=Path, help="Folder of the demo store (default $TMPDIR/web-demo-BACKEND).")
    parser.add_argument("--demo-schema", default=DEMO_SCHEMA, help="Postgres schema of the demo store.")
    parser.add_argument("--tool", choices=["auto", "wrk", "loadgen"], default="auto")
    args = parser.parse_args()
    if args.demo_dir is not None and args.backend and len(args.backend) > 1:
        parser.error("--demo-dir names one store: give one --backend with it")
    tool = load_tool(args.tool)
    results = [measure(b, args, tool) for b in (args.backend or ["sqlite", "postgres"])]
    print(json.dumps({"benchmark": "web_latency", "page": "unit (HTML)", "store": args.store, "tool": tool,
                      "connections": args.connections, "workers": args.workers, "duration_s": args.duration,
                      "warmup_s": args.warmup, "machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
