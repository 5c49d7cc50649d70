"""Throughput of the unit JSON endpoint against /healthz, in the same run.

Target: unit JSON requests/s >= 0.5x /healthz requests/s, on SQLite and on Postgres. The
clients cycle through every unit of the store: the test suite's made-up store (`--store
sample`) or the demo's (`--store demo`, served by `microscope serve --workers N`; see
web_latency.py). The server runs in its own process(es) on loopback; the load comes from
another process (wrk, or benchmarks/loadgen.py where wrk is missing). The two endpoints are
measured in alternating rounds so that drifts in the machine's load hit both alike; the ratio
is of the medians. Prints one JSON object.

    python benchmarks/web_throughput.py [--backend sqlite --backend postgres] [--duration 10] [--rounds 3] \
        [--store demo --workers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._web import DEMO_SCHEMA, load_tool, machine, run_load, serve, serve_demo  # noqa: E402

TARGET = 0.5


def measure(backend: str, duration: float, rounds: int, connections: int, tool: str, args: argparse.Namespace) -> dict:
    server_cm = serve_demo(backend, args.workers, folder=args.demo_dir, schema=args.demo_schema) if args.store == "demo" else serve(backend)
    with server_cm as server:
        unit_json = ["/api/v1" + path for path in server.unit_paths]
        run_load(server.url, ["/healthz"], connections=connections, duration=min(duration, 3), tool=tool)  # warm up
        run_load(server.url, unit_json, connections=connections, duration=min(duration, 3), tool=tool)
        health, units = [], []
        for _ in range(rounds):
            health.append(run_load(server.url, ["/healthz"], connections=connections, duration=duration, tool=tool))
            units.append(run_load(server.url, unit_json, connections=connections, duration=duration, tool=tool))
    health_rps = statistics.median(r["rps"] for r in health)
    unit_rps = statistics.median(r["rps"] for r in units)
    return {
        "backend": backend,
        "healthz_rps": round(health_rps, 1),
        "unit_json_rps": round(unit_rps, 1),
        "ratio": round(unit_rps / health_rps, 3),
        "target": TARGET,
        "meets_target": unit_rps / health_rps >= TARGET,
        "errors": sum(r["errors"] for r in health + units),
        "rounds": [{"healthz_rps": round(h["rps"], 1), "unit_json_rps": round(u["rps"], 1)} for h, u in zip(health, units)],
        "unit_json_p50_ms": round(statistics.median(r["p50"] for r in units) * 1000, 2),
        "healthz_p50_ms": round(statistics.median(r["p50"] for r in health) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per measurement.")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds of each endpoint.")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--store", choices=["sample", "demo"], default="sample")
    parser.add_argument("--workers", type=int, default=1, help="Server processes, `microscope serve --workers` (demo store).")
    parser.add_argument("--demo-dir", type=Path, help="Folder of the demo store (default $TMPDIR/web-demo-BACKEND).")
    parser.add_argument("--demo-schema", default=DEMO_SCHEMA, help="Postgres schema of the demo store.")
    parser.add_argument("--tool", choices=["auto", "wrk", "loadgen"], default="auto")
    args = parser.parse_args()
    tool = load_tool(args.tool)
    results = [measure(b, args.duration, args.rounds, args.connections, tool, args) for b in (args.backend or ["sqlite", "postgres"])]
    print(json.dumps({"benchmark": "web_throughput", "store": args.store, "tool": tool, "connections": args.connections,
                      "workers": args.workers, "duration_s": args.duration, "machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
