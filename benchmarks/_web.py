"""Shared pieces of the web benchmarks: a populated store on SQLite or Postgres, the server in
its own process on loopback, and a load tool in another (wrk when installed, else our asyncio
load generator, benchmarks/loadgen.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("MICROSCOPE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass
class Server:
    url: str
    backend: str
    unit_paths: list[str]  # populated units of the toy models, as /models/.../index


@contextmanager
def _database(backend: str, folder: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'microscope.db'}"
        return
    from sqlalchemy import create_engine, pool
    from sqlalchemy.engine import make_url

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, poolclass=pool.NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@contextmanager
def serve(backend: str, units: int = 64, images: int = 64) -> Iterator[Server]:
    """A migrated store with sample results for both toy models, served by uvicorn (one
    process, as `microscope serve` runs it) on a free loopback port."""
    sys.path.insert(0, str(REPO))
    from store import migrations
    from tests.sample_store import populate
    from tests.server import served

    folder = Path(tempfile.mkdtemp(prefix=f"microscope-bench-{backend}-"))
    try:
        with _database(backend, folder) as url:
            migrations.upgrade(url)
            populated = populate(url, str(folder / "blobs"), units=units, images=images)
            paths = [f"/models/{m}/{info['layer']}/{i}" for m, info in populated.models.items() for i in range(info["units"])]
            env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
            env.update(MICROSCOPE_DATABASE_URL=url, MICROSCOPE_BLOB_URL=str(folder / "blobs"), MICROSCOPE_DATA_DIR=str(folder))
            with served(env, folder / "server.log", uvicorn_args=["--no-access-log"]) as base:
                yield Server(base, backend, paths)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def load_tool(preferred: str = "auto") -> str:
    if preferred in ("auto", "wrk") and shutil.which("wrk"):
        return "wrk"
    if preferred == "wrk":
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    return "loadgen"


_WRK_SCRIPT = """
paths = {%s}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1])
end
"""


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def run_load(base: str, paths: list[str], *, connections: int, duration: float, tool: str, threads: int = 2) -> dict:
    """Hit `paths` (round robin) from `connections` keep-alive clients for `duration` seconds,
    in a separate process; returns requests/s, latency percentiles (seconds) and errors."""
    if tool == "wrk":
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(_WRK_SCRIPT % ", ".join(json.dumps(p) for p in paths))
        try:
            out = subprocess.run(
                ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{duration:g}s", "--timeout", "30s",
                 "--latency", "-s", script.name, base],
                capture_output=True, text=True, check=True,
            ).stdout
        finally:
            os.unlink(script.name)
        return _parse_wrk(out)
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "loadgen.py"), base, "--connections", str(connections), "--duration", str(duration),
         *[arg for p in paths for arg in ("--path", p)]],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out)


def _parse_wrk(out: str) -> dict:
    requests = int(re.search(r"(\d+) requests in ([\d.]+\w+)", out).group(1))
    elapsed = _seconds(re.search(r"\d+ requests in ([\d.]+\w+)", out).group(1))
    percentiles = {f"p{p}": _seconds(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)", out, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(int(x) for x in sockets.groups()) if sockets else 0)
    return {"requests": requests, "seconds": elapsed, "rps": requests / elapsed, "errors": errors, **percentiles}


def machine() -> dict:
    return {"cores": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2), "python": sys.version.split()[0]}
