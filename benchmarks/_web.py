"""Shared pieces of the web benchmarks: a store on SQLite or Postgres (the test suite's sample
store, or the one `microscope demo` builds), the server in its own process(es) on loopback, and
a load tool in another (wrk when installed, else our asyncio load generator,
benchmarks/loadgen.py)."""

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
# Where the demo stores live between runs (a build takes minutes), one per backend.
DEMO_ROOT = Path(os.environ.get("MICROSCOPE_BENCH_DEMO_ROOT", tempfile.gettempdir()))
DEMO_SCHEMA = "web_demo"
DEMO_BUILT = "demo-built"  # written into the demo's folder once `microscope demo` has finished


@dataclass
class Server:
    url: str
    backend: str
    unit_paths: list[str]  # populated units of the toy models, as /models/.../index
    pid: int | None = None  # the server's main process, where it is known


def server_cpu_seconds(pid: int | None) -> float | None:
    """CPU time used so far by a process and all its descendants (uvicorn's workers), from
    /proc: a figure that other load on the machine does not inflate as much as latency."""
    proc = Path("/proc")
    if pid is None or not proc.exists():
        return None
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = (proc / str(current) / "stat").read_text().rsplit(")", 1)[1].split()
            children = (proc / str(current) / "task" / str(current) / "children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        pending.extend(int(c) for c in children)
    return total


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


def _schema_url(schema: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


def demo_environment(backend: str, folder: Path, schema: str = DEMO_SCHEMA) -> dict[str, str]:
    """The environment `microscope demo` and `microscope serve` run in for a demo store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    env["MICROSCOPE_DATA_DIR"] = str(folder)
    if backend == "postgres":
        env["MICROSCOPE_DATABASE_URL"] = _schema_url(schema)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def ensure_demo(backend: str, folder: Path | None = None, schema: str = DEMO_SCHEMA) -> tuple[Path, dict[str, str]]:
    """The demo store for `backend` (SQLite in the folder, or Postgres in `schema` with blobs in
    the folder): built by `microscope demo --no-serve` the first time, reused afterwards."""
    folder = folder or DEMO_ROOT / f"web-demo-{backend}"
    env = demo_environment(backend, folder, schema)
    if not (folder / DEMO_BUILT).exists():
        folder.mkdir(parents=True, exist_ok=True)
        if backend == "postgres":
            from sqlalchemy import create_engine, pool

            admin = create_engine(POSTGRES_URL, poolclass=pool.NullPool)
            with admin.begin() as conn:
                conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            admin.dispose()
        print(f"building the demo store in {folder} ({backend}); this takes minutes", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "cli.main", "demo", "--no-serve"], env=env, cwd=REPO, check=True,
                       stdout=sys.stderr)
        (folder / DEMO_BUILT).write_text(env.get("MICROSCOPE_DATABASE_URL", "sqlite") + "\n")
    return folder, env


def demo_unit_paths(env: dict[str, str]) -> list[str]:
    """Every unit page of the layers the demo computed (each model's last layer)."""
    sys.path.insert(0, str(REPO))
    from sqlalchemy import exists, select

    from app.settings import Settings
    from store.models import DatasetExample, Layer, Unit
    from store.session import make_engine

    settings = Settings(data_dir=env["MICROSCOPE_DATA_DIR"], database_url=env.get("MICROSCOPE_DATABASE_URL", ""))
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            has_examples = exists().where(DatasetExample.unit_id == Unit.id, Unit.layer_id == Layer.id)
            layers = conn.execute(select(Layer.model_id, Layer.name, Layer.units).where(has_examples)
                                  .order_by(Layer.model_id, Layer.name)).all()
    finally:
        engine.dispose()
    if not layers:
        raise RuntimeError(f"the demo store at {settings.database_url} has no dataset examples; delete its folder and rerun")
    return [f"/models/{model}/{layer}/{i}" for model, layer, units in layers for i in range(units)]


@contextmanager
def serve_command(env: dict[str, str], log_path: Path, workers: int = 1, launcher: str = "microscope") -> Iterator[tuple[str, int]]:
    """The server as a user starts it, `microscope serve --workers N` (or, with launcher
    "uvicorn", uvicorn's own command line, for code that predates that option), on a free
    loopback port until the block ends: its base URL and process id."""
    from tests.server import _wait_ready, free_port, stop_group

    port = free_port()
    if launcher == "microscope":
        command = [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                   *(["--workers", str(workers)] if workers != 1 else [])]
    else:
        command = [sys.executable, "-m", "uvicorn", "app.server:create_app", "--factory", "--host", "127.0.0.1",
                   "--port", str(port), "--no-access-log", "--log-level", "warning", "--workers", str(workers)]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        # Its own process group: uvicorn's worker processes end with it.
        server = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_ready(url + "/healthz", server, log_path, 180)
            yield url, server.pid
        finally:
            stop_group(server)


@contextmanager
def serve_demo(backend: str, workers: int = 1, launcher: str = "microscope", folder: Path | None = None,
               schema: str = DEMO_SCHEMA) -> Iterator[Server]:
    """The demo's store (built once, see ensure_demo) served with `workers` processes."""
    folder, env = ensure_demo(backend, folder, schema)
    paths = demo_unit_paths(env)
    with serve_command(env, folder / f"server-{backend}-{workers}.log", workers, launcher) as (base, pid):
        yield Server(base, backend, paths, pid)


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
