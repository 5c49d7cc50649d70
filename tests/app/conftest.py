"""Stores per backend, built once per test session, and clients on them.

- `job_store`: filled by the real examples and words jobs (tests/job_store.py), for the pages
  that show what those jobs write.
- `store`: sample results shaped like every job's output (tests/sample_store.py), including
  what no job writes yet (feature visualizations, directions, decompositions). Populating it
  takes seconds, so the read-only page tests share it. Tests that write use their own units
  and collection names and never assert on global counts.
- `live_store`: the same sample results, for the live probes and uploads, which add models.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.server import create_app
from app.settings import Settings
from tests.conftest import fresh_postgres_schema
from tests.job_store import JobStore, fill_with_jobs
from tests.sample_store import Populated, create_token, populate


@dataclass
class Store:
    backend: str
    database_url: str
    blob_url: str
    populated: Populated
    token: str  # a write token held by "tester"

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "blob_url": self.blob_url,
            "data_dir": Path(self.blob_url).parent / "data",
            "device": "cpu",
            "live_rate_limit": "10000/minute",
        }
        values.update(overrides)
        return Settings(**values)


def _postgres_schema() -> tuple[str, Any]:
    schema = ExitStack()
    return schema.enter_context(fresh_postgres_schema()), schema.close


def _database(backend: str, folder: Path) -> tuple[str, Any]:
    """An empty database on `backend` and what drops it afterwards (None for a SQLite file)."""
    if backend == "sqlite":
        return f"sqlite:///{folder / 'microscope.db'}", None
    return _postgres_schema()


def build_store(backend: str, folder: Path, **kwargs: Any) -> tuple[Store, Any]:
    from store import migrations

    url, drop = _database(backend, folder)
    migrations.upgrade(url)
    blob_url = str(folder / "blobs")
    populated = populate(url, blob_url, **kwargs)
    return Store(backend, url, blob_url, populated, create_token(url, "tester")), drop


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@contextmanager
def built_store(backend: str, folder: Path, **kwargs: Any) -> Iterator[Store]:
    built, drop = build_store(backend, folder, **kwargs)
    try:
        yield built
    finally:
        if drop:
            drop()


@pytest.fixture(scope="session", params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The shared read-only store of the page tests, one per backend."""
    with built_store(request.param, tmp_path_factory.mktemp(f"store-{request.param}"), units=12, images=24) as built:
        yield built


@pytest.fixture(scope="session", params=BACKENDS)
def live_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A store per backend for the live probes and uploads, which register extra models into it
    (so the page tests' store keeps exactly the two toy models)."""
    with built_store(request.param, tmp_path_factory.mktemp(f"live-{request.param}"), units=12, images=24) as built:
        yield built


@pytest.fixture(scope="session", params=BACKENDS)
def job_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobStore]:
    """A store per backend that the real examples and words jobs filled (tests/job_store.py)."""
    folder = tmp_path_factory.mktemp(f"jobs-{request.param}")
    url, drop = _database(request.param, folder)
    try:
        yield fill_with_jobs(request.param, url, str(folder / "blobs"))
    finally:
        if drop:
            drop()


@pytest.fixture
def job_web(job_store: JobStore) -> Iterator[TestClient]:
    settings = Settings(database_url=job_store.database_url, blob_url=job_store.blob_url,
                        data_dir=Path(job_store.blob_url).parent / "data", device="cpu")
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def web(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store.settings())) as client:
        yield client


@pytest.fixture
def live_web(live_store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(live_store.settings())) as client:
        yield client
