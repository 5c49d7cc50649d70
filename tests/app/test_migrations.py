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


# -- 0003: blob and job-state references become names relative to their stores ----------------
IMAGE = "ab" * 32 + ".png"
CROP = "cd" * 32 + ".png"
VIZ = "ef" * 32 + ".png"
VECTORS = "01" * 32 + ".npy"
MEAN = "23" * 32 + ".npy"
DIRECTION = "45" * 32 + ".npy"
STATE = "examples-1-0000000100.npz"
NOT_OURS = "file:///srv/pictures/holiday.png"  # not content-addressed: no store wrote it


def _fanned(root: str, name: str) -> str:
    return f"{root}/{name[:2]}/{name[2:4]}/{name}"


def _write_rows_at_0002(url: str) -> None:
    """Rows as the store wrote them before 0003: absolute URIs of the folder that wrote them
    (and one object-storage URI, and one value that is no blob of ours)."""
    from datetime import datetime, timezone

    from sqlalchemy import MetaData

    old = "file:///home/someone/old-data/blobs"
    now = datetime.now(timezone.utc)
    engine = make_engine(url, poolclass=pool.NullPool)
    try:
        tables = MetaData()
        tables.reflect(engine)
        t = tables.tables
        with engine.begin() as conn:
            conn.execute(t["models"].insert(), [{"id": "m", "arch": "RN50", "source": "random", "image_size": 64,
                                                 "preprocess": {}, "description": "", "created_at": now}])
            conn.execute(t["layers"].insert(), [{"id": 1, "model_id": "m", "name": "layer4", "kind": "resnet_stage",
                                                 "units": 2, "has_class_token": False, "position": 0}])
            conn.execute(t["units"].insert(), [{"id": 1, "layer_id": 1, "index": 0, "direction_uri": _fanned(old, DIRECTION)},
                                                {"id": 2, "layer_id": 1, "index": 1, "direction_uri": None}])
            conn.execute(t["datasets"].insert(), [{"id": "d", "source_uri": "/data/pictures", "kind": "folder",
                                                   "image_count": 2, "created_at": now}])
            conn.execute(t["images"].insert(), [{"id": 1, "sha256": "ab" * 32, "blob_uri": _fanned(old, IMAGE), "width": 8, "height": 8},
                                                 {"id": 2, "sha256": "99" * 32, "blob_uri": NOT_OURS, "width": 8, "height": 8}])
            conn.execute(t["dataset_examples"].insert(), [
                {"id": 1, "unit_id": 1, "dataset_id": "d", "sign": "top", "rank": 0, "image_id": 1, "activation": 1.0,
                 "position": 3, "crop_uri": _fanned(old, CROP)},
                {"id": 2, "unit_id": 1, "dataset_id": "d", "sign": "top", "rank": 1, "image_id": 2, "activation": 0.5,
                 "position": None, "crop_uri": None},
            ])
            conn.execute(t["featureviz"].insert(), [{"id": 1, "unit_id": 1, "kind": "channel", "variant": "",
                                                     "blob_uri": _fanned("s3://lab-bucket/microscope/blobs", VIZ),
                                                     "parameters": {}, "created_at": now}])
            conn.execute(t["word_lists"].insert(), [{"id": "w", "source": "test", "words": ["red"], "font": "f",
                                                     "image_size": 64, "created_at": now}])
            conn.execute(t["word_embeddings"].insert(), [{"id": 1, "layer_id": 1, "word_list_id": "w",
                                                          "vectors_uri": _fanned(old, VECTORS), "mean_uri": _fanned(old, MEAN)}])
            job = {"kind": "examples", "model_id": "m", "layer": "layer4", "dataset_id": "d", "shard_count": 1, "state": "running",
                   "progress": 0.5, "done_items": 100, "total_items": 200, "cursor": 100, "created_at": now, "updated_at": now}
            conn.execute(t["jobs"].insert(), [{**job, "id": 1, "shard": 0, "state_uri": f"{old}/job-state/{STATE}"},
                                               {**job, "id": 2, "shard": 1, "state_uri": None}])
    finally:
        engine.dispose()


def _references(url: str) -> dict[str, object]:
    engine = make_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            one = lambda sql: conn.exec_driver_sql(sql).all()  # noqa: E731
            return {
                "images": one("SELECT blob_uri FROM images ORDER BY id"),
                "crops": one("SELECT crop_uri FROM dataset_examples ORDER BY id"),
                "featureviz": one("SELECT blob_uri FROM featureviz"),
                "word_embeddings": one("SELECT vectors_uri, mean_uri FROM word_embeddings"),
                "directions": one("SELECT direction_uri FROM units ORDER BY id"),
                "states": one("SELECT state_uri FROM jobs ORDER BY id"),
            }
    finally:
        engine.dispose()


def _as_names() -> dict[str, object]:
    return {
        "images": [(IMAGE,), (NOT_OURS,)],
        "crops": [(CROP,), (None,)],
        "featureviz": [(VIZ,)],
        "word_embeddings": [(VECTORS, MEAN)],
        "directions": [(DIRECTION,), (None,)],
        "states": [(STATE,), (None,)],
    }


def _as_uris(blobs: str) -> dict[str, object]:
    return {
        "images": [(_fanned(blobs, IMAGE),), (NOT_OURS,)],
        "crops": [(_fanned(blobs, CROP),), (None,)],
        "featureviz": [(_fanned(blobs, VIZ),)],
        "word_embeddings": [(_fanned(blobs, VECTORS), _fanned(blobs, MEAN))],
        "directions": [(_fanned(blobs, DIRECTION),), (None,)],
        "states": [(f"{blobs}/job-state/{STATE}",), (None,)],
    }


def test_0003_rewrites_blob_uris_to_names_and_back(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from alembic import command

    migrations.upgrade(database_url, "0002")
    _write_rows_at_0002(database_url)

    migrations.upgrade(database_url)
    assert _references(database_url) == _as_names()
    migrations.upgrade(database_url)  # at head already: nothing runs, nothing changes
    assert _references(database_url) == _as_names()

    # Down: the absolute URIs of the blob store configured now, where older code looks.
    config = migrations.alembic_config(database_url)
    config.attributes["blob_url"] = str(tmp_path / "restored" / "blobs")
    command.downgrade(config, "0002")
    assert migrations.current(database_url) == "0002"
    assert _references(database_url) == _as_uris(f"file://{tmp_path}/restored/blobs")

    # Up again from those, then down with the blob URL from the settings (the environment).
    migrations.upgrade(database_url)
    assert _references(database_url) == _as_names()
    monkeypatch.delenv("MICROSCOPE_SETTINGS_FILE", raising=False)
    monkeypatch.setenv("MICROSCOPE_BLOB_URL", str(tmp_path / "from-env"))
    migrations.downgrade(database_url, "0002")
    assert _references(database_url) == _as_uris(f"file://{tmp_path}/from-env")
