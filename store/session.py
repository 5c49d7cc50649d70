"""Engines and sessions for SQLite (the single-box default) and Postgres (shared deployments)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from precompute.errors import Problem


def sqlite_file(url: str | URL) -> Path | None:
    """The database file behind a SQLite URL, or None for in-memory / URI-style databases."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return None
    database = u.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine configured for how this project uses each backend.

    SQLite: the data folder may not exist yet on a fresh install, so create it; SQLite leaves
    foreign keys off unless asked per connection, and without them ON DELETE CASCADE silently
    does nothing; WAL lets the web server read while a precompute job writes.
    Postgres: a long-lived server outlives database restarts, so a pooled connection that sat
    idle for `ping_idle_seconds` (default PING_IDLE_SECONDS) is pinged before it is handed out
    and replaced if it is dead; one in steady use is not (`pool_pre_ping` would ping on every
    checkout: a round trip per request). A connection that dies while in use still fails that
    one statement, as with pre-ping, and the pool then drops every connection of its generation.
    """
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        path = sqlite_file(u)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        connect_args = dict(kwargs.pop("connect_args", {}))
        # The web server hands pooled connections to worker threads.
        connect_args.setdefault("check_same_thread", False)
        engine = create_engine(u, connect_args=connect_args, **kwargs)
        on_disk = path is not None

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute("PRAGMA foreign_keys=ON")
                if on_disk:
                    cursor.execute("PRAGMA journal_mode=WAL")
                    # Concurrent writers (web + job) wait for each other instead of failing at once.
                    cursor.execute("PRAGMA busy_timeout=30000")
            finally:
                cursor.close()

        return engine

    ping_idle = kwargs.pop("ping_idle_seconds", PING_IDLE_SECONDS)
    engine = create_engine(u, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        _ping_when_idle(engine, ping_idle)

    @event.listens_for(engine, "handle_error")
    def _nul_in_text(context: Any) -> None:
        # Postgres text cannot hold NUL (SQLite's can): a request's text with one in it is
        # refused as bad input rather than failing as a server error.
        if "cannot contain NUL" in str(context.original_exception):
            raise Problem(422, "nul-byte", "text in the request contains a NUL (0x00) character, which the store cannot hold")

    return engine


PING_IDLE_SECONDS = 5.0


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    @event.listens_for(engine, "connect")
    def _connected(_dbapi_conn: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("checked_in_at", 0.0) < idle_seconds:
            return
        try:
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            dbapi_conn.rollback()
        except Exception as error:  # the server went away: the pool replaces this connection
            raise DisconnectionError(f"pooled connection is dead: {error}") from error


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: pages build plain dicts from ORM objects after the commit.
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session] | Engine) -> Iterator[Session]:
    """A unit of work for scripts and jobs: commit on success, roll back on error."""
    if isinstance(factory, Engine):
        factory = make_sessionmaker(factory)
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
