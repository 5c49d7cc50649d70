"""Alembic environment for clip-microscope.

The URL comes from, in order: `config.attributes["url"]` (set by store.migrations),
`-x url=...` on the command line, the MICROSCOPE_DATABASE_URL environment variable, and last
the app settings. A URL never goes through the ini file because configparser would try to
interpolate the `%` escapes that Postgres URLs carry (e.g. `options=-csearch_path%3Dx`).
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any

from sqlalchemy import pool, text
from sqlalchemy.engine import Connection, make_url

from alembic import context
from store.models import Base, UTCDateTime
from store.session import make_engine

config = context.config
target_metadata = Base.metadata

# Any constant works; it only has to be the same for every process migrating this database.
_PG_MIGRATION_LOCK = 0x6D6963726F  # "micro"

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    # disable_existing_loggers=False: when run inside the app, keep the app's own loggers alive.
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    url = config.attributes.get("url")
    if url:
        return str(url)
    url = context.get_x_argument(as_dictionary=True).get("url")
    if url:
        return url
    url = os.environ.get("MICROSCOPE_DATABASE_URL")
    if url:
        return url
    from app.settings import Settings

    return Settings().database_url


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Migrations must not import app code that may change later; render our UTC type as the
    # plain column type it stores.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection | None = None, url: str | None = None, **kw: Any) -> None:
    backend = connection.dialect.name if connection is not None else make_url(url or "").get_backend_name()
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=backend == "sqlite",
        compare_type=True,
        render_item=render_item,
        **kw,
    )


def run_migrations_offline() -> None:
    _configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection, owned: bool) -> None:
    if owned and connection.dialect.name == "sqlite":
        # Batch mode copies and drops tables; with foreign keys on, dropping a parent table
        # would cascade-delete child rows. The pragma is ignored inside a transaction, so it
        # goes first, and the connection is thrown away afterwards (NullPool).
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
    _configure(connection=connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Web and worker containers may both run `db upgrade` at start; serialize them so
            # the second sees the first one's result instead of failing on CREATE TABLE.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        # A caller's connection: its pragmas and transaction are the caller's business.
        _run_on(connection, owned=False)
        return
    engine = make_engine(database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run_on(connection, owned=True)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
