"""A pooled Postgres connection is pinged before use only after it sat idle, and a dead one
is then replaced: a server outlives database restarts without paying a round trip per
request while it is busy."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, pool, text
from sqlalchemy.exc import OperationalError

from store.session import make_engine
from tests.conftest import POSTGRES_URL, require_postgres

PID = text("SELECT pg_backend_pid()")


def _terminate(admin, pid: int) -> None:
    with admin.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    time.sleep(0.1)  # the backend is gone once its exit is processed


@pytest.mark.postgres
def test_idle_connections_are_pinged_and_busy_ones_are_not() -> None:
    require_postgres()
    admin = create_engine(POSTGRES_URL, poolclass=pool.NullPool)
    idle = make_engine(POSTGRES_URL, pool_size=1, max_overflow=0, ping_idle_seconds=0.3)
    busy = make_engine(POSTGRES_URL, pool_size=1, max_overflow=0, ping_idle_seconds=60)
    try:
        # Idle past the threshold: pinged on checkout, found dead, replaced; the caller sees no error.
        with idle.connect() as conn:
            pid = conn.execute(PID).scalar_one()
        _terminate(admin, pid)
        time.sleep(0.3)
        with idle.connect() as conn:
            assert conn.execute(PID).scalar_one() != pid
        # Reused within the threshold: handed out without a ping (so the statement meets the dead
        # connection), and the pool replaces it for the next caller.
        with busy.connect() as conn:
            pid = conn.execute(PID).scalar_one()
        with busy.connect() as conn:
            assert conn.execute(PID).scalar_one() == pid  # the same pooled connection
        _terminate(admin, pid)
        with pytest.raises(OperationalError), busy.connect() as conn:
            conn.execute(PID)
        with busy.connect() as conn:
            assert conn.execute(PID).scalar_one() != pid
    finally:
        idle.dispose()
        busy.dispose()
        admin.dispose()
