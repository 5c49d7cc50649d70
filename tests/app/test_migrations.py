"""The schema comes only from migrations; these tests hold the migrations to the models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, pool

from store import migrations
from store.models import Base
from store.session import make_engine

REPO_ROOT = Path(__file__).resolve().parents[2]


def _tables(url: str) -> dict[str, set[str]]:
    engine = make_engine(url, poolclass=pool.NullPool)
    try:
        insp = inspect(engine)
        return {t: {c["name"] for c in insp.get_columns(t)} for t in insp.get_table_names()}
    finally:
        engine.dispose()


def _metadata_tables() -> dict[str, set[str]]:
    return {name: {c.name for c in table.columns} for name, table in Base.metadata.tables.items()}


def _schema_diff(url: str) -> list:
    engine = make_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_matches_models(database_url: str) -> None:
    assert migrations.current(database_url) is None

    migrations.upgrade(database_url)
    assert migrations.current(database_url) == migrations.head()
    assert migrations.is_current(database_url)

    migrations.downgrade(database_url, "base")
    assert migrations.current(database_url) is None
    assert set(_tables(database_url)) <= {"alembic_version"}

    migrations.upgrade(database_url)
    tables = _tables(database_url)
    assert tables.pop("alembic_version") == {"version_num"}
    assert tables == _metadata_tables()
    # Beyond names: types, nullability, indexes, unique constraints and foreign keys agree.
    assert _schema_diff(database_url) == []


@pytest.mark.postgres
def test_postgres_schema_isolation(postgres_schema_url: str) -> None:
    """Everything, Alembic's version table included, lands in the test's own schema."""
    migrations.upgrade(postgres_schema_url)
    engine = make_engine(postgres_schema_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
            rows = conn.exec_driver_sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %(s)s", {"s": schema}
            ).scalars().all()
    finally:
        engine.dispose()
    assert schema.startswith("t_")
    assert set(rows) == set(Base.metadata.tables) | {"alembic_version"}


def _alembic_cli(args: list[str], cwd: Path, env_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    if env_url is not None:
        env["MICROSCOPE_DATABASE_URL"] = env_url
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_plain_alembic_cli(tmp_path: Path) -> None:
    """`alembic -x url=... upgrade/downgrade` from the repo root, and `-c` from elsewhere."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    done = _alembic_cli(["-x", f"url={url}", "upgrade", "head"], cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert migrations.current(url) == migrations.head()

    done = _alembic_cli(["-x", f"url={url}", "downgrade", "base"], cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert migrations.current(url) is None

    # From another cwd, URL from the environment.
    done = _alembic_cli(["-c", str(REPO_ROOT / "alembic.ini"), "upgrade", "head"], cwd=tmp_path, env_url=url)
    assert done.returncode == 0, done.stderr
    assert migrations.current(url) == migrations.head()


def test_programmatic_migrations_from_any_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'nested' / 'x.db'}"
    migrations.upgrade(url)
    assert migrations.current(url) == migrations.head()
