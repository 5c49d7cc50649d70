"""Latency of the unit page (HTML) at 32 concurrent clients: p50 and p99, and errors.

Target (issue 5): 60 s at 32 concurrent keep-alive clients with 0 errors, on SQLite and on
Postgres; p50 and p99 are reported. The clients cycle through the populated units of both toy
models. The server runs in its own process on loopback; the load comes from another process
(wrk, or benchmarks/loadgen.py where wrk is missing). Prints one JSON object.

    python benchmarks/web_latency.py [--backend sqlite --backend postgres] [--duration 60] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._web import load_tool, machine, run_load, serve  # noqa: E402


def measure(backend: str, duration: float, connections: int, tool: str) -> dict:
    with serve(backend) as server:
        run_load(server.url, server.unit_paths, connections=connections, duration=min(duration, 3), tool=tool)  # warm up
        result = run_load(server.url, server.unit_paths, connections=connections, duration=duration, tool=tool)
    return {
        "backend": backend,
        "requests": result["requests"],
        "rps": round(result["rps"], 1),
        "p50_ms": round(result["p50"] * 1000, 2),
        "p90_ms": round(result["p90"] * 1000, 2),
        "p99_ms": round(result["p99"] * 1000, 2),
        "errors": result["errors"],
        "meets_target": result["errors"] == 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds of load.")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--tool", choices=["auto", "wrk", "loadgen"], default="auto")
    args = parser.parse_args()
    tool = load_tool(args.tool)
    results = [measure(b, args.duration, args.connections, tool) for b in (args.backend or ["sqlite", "postgres"])]
    print(json.dumps({"benchmark": "web_latency", "page": "unit (HTML)", "tool": tool, "connections": args.connections,
                      "duration_s": args.duration, "machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
