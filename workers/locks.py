"""One driver at a time per piece of precompute work, and a dead driver's jobs freed at once.

A job row left `running` after a crash (SIGKILL, power loss) looks exactly like one whose
worker is alive. Rather than waiting for its heartbeat to go stale, each `microscope
precompute` driver holds a lock named after its work while it runs: a Postgres advisory lock
(held by a dedicated connection, released by the server when that connection dies) or, for
SQLite, an flock on a file beside the database (released by the kernel when the process
dies). Whoever holds the lock knows that any `running` job of that work is an orphan and
may take it over immediately.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

from store.session import sqlite_file
from precompute.errors import MicroscopeError


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def driver_lock(engine: Engine, name: str) -> Iterator[None]:
    busy = MicroscopeError(f"another `microscope precompute` is already running {name}; wait for it or stop it first")
    if engine.dialect.name == "postgresql":
        # The same work in another database (or schema) of the server is other work.
        name = f"{engine.url.render_as_string(hide_password=True)}|{name}"
        connection = engine.connect()
        try:
            got = connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _key(name)}).scalar_one()
            connection.commit()
            if not got:
                raise busy
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _key(name)})
                connection.commit()
        finally:
            connection.close()
        return
    database = sqlite_file(engine.url) if engine.dialect.name == "sqlite" else None
    folder = Path(f"{database}.locks") if database else Path(tempfile.gettempdir()) / "microscope-locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:100] + f"-{_key(name) & 0xFFFFFFFF:08x}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
