"""Shared fixtures: real databases (SQLite file and PostgreSQL), migrated stores, the web app.

PostgreSQL isolation is one fresh schema per test inside the `test` database, selected via
the connection's search_path, so tests never see each other's tables and Alembic's version
table lands in that schema too. Where Postgres is unreachable the Postgres half of the
parametrised tests is skipped, except under CI (env var `CI` set), where a skip would hide a
broken pipeline, so it fails instead.
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, pool
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

POSTGRES_URL = os.environ.get(
    "MICROSCOPE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@functools.cache
def _postgres_problem() -> str | None:
    engine = create_engine(POSTGRES_URL, poolclass=pool.NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:  # any failure means "no usable server"; the message says which
        return f"{type(exc).__name__}: {exc}".strip()
    finally:
        engine.dispose()
    return None


def require_postgres() -> None:
    problem = _postgres_problem()
    if problem is None:
        return
    message = f"PostgreSQL unreachable at {POSTGRES_URL}: {problem}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: Postgres tests must run there, so this fails instead of skipping)")
    pytest.skip(message)


@contextlib.contextmanager
def fresh_postgres_schema() -> Iterator[str]:
    """URL of a fresh, empty Postgres schema, dropped with everything in it afterwards."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(POSTGRES_URL, poolclass=pool.NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    base = make_url(POSTGRES_URL)
    url = base.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            # A leaked connection holding locks would otherwise hang the whole run here.
            conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def postgres_schema_url() -> Iterator[str]:
    with fresh_postgres_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend; the schema is for the test to create (by migrating)."""
    if request.param == "sqlite":
        # A subfolder that does not exist yet: make_engine must create it.
        return f"sqlite:///{tmp_path / 'db' / 'microscope.db'}"
    return request.getfixturevalue("postgres_schema_url")


@pytest.fixture
def migrated_url(database_url: str) -> str:
    from store import migrations

    migrations.upgrade(database_url)
    return database_url


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    from store.session import make_engine

    engine = make_engine(migrated_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    from store.session import make_sessionmaker

    with make_sessionmaker(engine)() as session:
        yield session


@pytest.fixture
def app_settings(migrated_url: str, tmp_path: Path) -> Any:
    from app.settings import Settings

    return Settings(database_url=migrated_url, data_dir=tmp_path / "data", blob_url=str(tmp_path / "blobs"), device="cpu")


def toy_model(model_id: str = "toy-rn", big_layer_units: int = 4096) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A registration record shaped like what the CLI builds for a small ResNet tower."""
    record = {
        "id": model_id,
        "arch": "RN50",
        "source": "pretrained",
        "pretrained_tag": "openai",
        "image_size": 224,
        "preprocess": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
        "description": "test model",
    }
    layers = [
        {"name": "layer3", "kind": "resnet_stage", "units": 1024, "spatial": (14, 14), "has_class_token": False, "position": 0},
        {"name": "layer4", "kind": "resnet_stage", "units": 2048, "spatial": (7, 7), "has_class_token": False, "position": 1},
        {"name": "attnpool", "kind": "attnpool", "units": big_layer_units, "spatial": None, "has_class_token": False, "position": 2},
    ]
    return record, layers
