"""The app served by a real uvicorn in its own process, on a free loopback port, as
`microscope serve` runs it: for the browser tests and the web benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(env: dict[str, str], log_path: Path, ready: str = "/healthz", uvicorn_args: Sequence[str] = (),
           timeout: float = 180) -> Iterator[str]:
    """Uvicorn serving the app with `env` until the block ends: its base URL.

    It counts as up once `ready` answers 200 (/healthz needs a migrated store); if it exits
    or does not come up within `timeout` seconds, RuntimeError carries the tail of its log.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.server:create_app", "--factory", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning", *uvicorn_args],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(url + ready, server, log_path, timeout)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()


def _wait_ready(url: str, server: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as client:
        while True:
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer {url} within {timeout:g} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)


def stop_group(server: subprocess.Popen) -> None:
    """End a server started in its own process group (`start_new_session=True`), its worker
    processes with it: SIGTERM, then SIGKILL if it has not gone in 20 s."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
