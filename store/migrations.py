"""Programmatic Alembic: what `microscope db ...` and the tests call.

Paths come from store.paths, so this works from any cwd and from an installed wheel (where
alembic/ and alembic.ini ride under store/_bundled). The URL is handed to env.py through
`config.attributes`, never through the ini file, because configparser would mangle the `%`
escapes a Postgres URL can carry.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import pool
from sqlalchemy.engine import URL

from store.paths import alembic_dir, alembic_ini
from store.session import make_engine


def _url_str(url: str | URL) -> str:
    # str(URL) masks the password as ***; Alembic needs the real one.
    return url.render_as_string(hide_password=False) if isinstance(url, URL) else url


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic Config bound to this project's scripts (and to `url` when given)."""
    cfg = Config(str(alembic_ini()))
    cfg.set_main_option("script_location", str(alembic_dir()).replace("%", "%%"))
    # Leave the host program's logging alone; the CLI prints its own messages.
    cfg.attributes["configure_logger"] = False
    if url is not None:
        cfg.attributes["url"] = _url_str(url)
    return cfg


def upgrade(url: str | URL, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | URL, revision: str) -> None:
    # No default on purpose: `downgrade base` drops every table and all precomputed results.
    command.downgrade(alembic_config(url), revision)


def current(url: str | URL) -> str | None:
    """The revision the database is at; None for an empty (never migrated) database."""
    engine = make_engine(_url_str(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head() -> str | None:
    """The newest revision among the migration scripts shipped with this code."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def is_current(url: str | URL) -> bool:
    """Whether the database schema matches this code (no migration pending)."""
    return current(url) == head()
