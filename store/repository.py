"""Reads and idempotent writes on the store.

Writes key on natural keys (model slug, (model, layer name), (layer, unit index), job
coordinates) and upsert, so re-running a registration or a job never duplicates rows. The
functions flush but never commit: the caller owns the transaction (see
store.session.session_scope), so a job can commit a batch of results atomically.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, selectinload

from store.models import MODEL_SOURCES, Job, Layer, Model, Unit, utcnow

MODEL_FIELDS = frozenset(c.name for c in Model.__table__.columns)
LAYER_FIELDS = frozenset({"name", "kind", "units", "spatial", "has_class_token", "position"})
_REQUIRED_MODEL_FIELDS = frozenset({"id", "arch", "source", "image_size", "preprocess"})


# -- generic upsert ---------------------------------------------------------------------------
def _upsert(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    update_columns: Iterable[str] | None = None,
) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE/NOTHING, for many rows in one executemany.

    `update_columns=None` updates every non-key column present in the rows; an empty list
    means DO NOTHING (keep what is there, e.g. unit statistics computed by an earlier run).
    SQLite and Postgres share the ON CONFLICT syntax; other backends fall back to a
    select-then-write loop, which is correct but slow and not safe against concurrent writers.
    """
    if not rows:
        return
    columns = list(rows[0])
    if update_columns is None:
        update_columns = [c for c in columns if c not in keys]
    update_columns = list(update_columns)
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        stmt = insert(table)
        if update_columns:
            stmt = stmt.on_conflict_do_update(
                index_elements=list(keys),
                set_={c: stmt.excluded[c] for c in update_columns},
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
        session.execute(stmt, list(rows))
        return
    for row in rows:
        where = and_(*(table.c[k] == row[k] for k in keys))
        if session.execute(select(func.count()).select_from(table).where(where)).scalar_one():
            if update_columns:
                session.execute(update(table).where(where).values({c: row[c] for c in update_columns}))
        else:
            session.execute(table.insert().values(row))


# -- models, layers, units --------------------------------------------------------------------
def _model_row(record: dict[str, Any]) -> dict[str, Any]:
    unknown = set(record) - MODEL_FIELDS
    if unknown:
        raise ValueError(f"unknown model fields: {sorted(unknown)}")
    missing = _REQUIRED_MODEL_FIELDS - set(record)
    if missing:
        raise ValueError(f"model record lacks: {sorted(missing)}")
    if record["source"] not in MODEL_SOURCES:
        raise ValueError(f"source must be one of {MODEL_SOURCES}, got {record['source']!r}")
    row = {
        "pretrained_tag": None,
        "checkpoint_sha256": None,
        "checkpoint_path": None,
        "description": "",
        **record,
    }
    row.setdefault("created_at", utcnow())
    return row


def _layer_row(model_id: str, layer: dict[str, Any]) -> dict[str, Any]:
    unknown = set(layer) - LAYER_FIELDS
    missing = LAYER_FIELDS - {"spatial", "has_class_token"} - set(layer)
    if unknown or missing:
        raise ValueError(f"layer {layer.get('name')!r}: unknown {sorted(unknown)}, missing {sorted(missing)}")
    spatial = layer.get("spatial")
    if spatial is not None:
        h, w = (int(v) for v in spatial)
    else:
        h = w = None
    return {
        "model_id": model_id,
        "name": layer["name"],
        "kind": layer["kind"],
        "units": int(layer["units"]),
        "spatial_h": h,
        "spatial_w": w,
        "has_class_token": bool(layer.get("has_class_token", False)),
        "position": int(layer["position"]),
    }


def upsert_model(session: Session, record: dict[str, Any], layers: list[dict[str, Any]]) -> Model:
    """Register or refresh a model with its full list of layers and one unit row per unit.

    `record` has the columns of `models` (id, arch, source, image_size, preprocess required).
    Each layer has name, kind, units, spatial ((h, w) or None), has_class_token, position.
    `layers` is the complete list: layers no longer in it are deleted with everything hanging
    off them, and units beyond a layer's new count likewise, so the store mirrors the model.
    Existing units keep their statistics and labels. `created_at` of an existing model is kept.
    """
    row = _model_row(record)
    model_id = row["id"]
    _upsert(session, Model.__table__, [row], ["id"], [c for c in row if c not in ("id", "created_at")])

    names = [layer["name"] for layer in layers]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate layer names for model {model_id!r}")
    session.execute(delete(Layer).where(Layer.model_id == model_id, Layer.name.not_in(names)))
    _upsert(session, Layer.__table__, [_layer_row(model_id, layer) for layer in layers], ["model_id", "name"])

    layer_ids = dict(session.execute(select(Layer.name, Layer.id).where(Layer.model_id == model_id)).all())
    units_table = Unit.__table__
    for layer in layers:
        layer_id, count = layer_ids[layer["name"]], int(layer["units"])
        session.execute(delete(Unit).where(Unit.layer_id == layer_id, Unit.index >= count))
        have = session.execute(
            select(func.count()).select_from(Unit).where(Unit.layer_id == layer_id)
        ).scalar_one()
        if have == count:
            continue  # indices are unique and < count, so the layer is already complete
        rows = [{"layer_id": layer_id, "index": i} for i in range(count)]
        _upsert(session, units_table, rows, ["layer_id", "index"], update_columns=[])

    session.flush()
    # Core statements bypass the identity map; reload so the caller sees what is stored.
    model = session.execute(
        select(Model)
        .where(Model.id == model_id)
        .options(selectinload(Model.layers))
        .execution_options(populate_existing=True)
    ).scalar_one()
    return model


def list_models(session: Session) -> list[Model]:
    stmt = select(Model).options(selectinload(Model.layers)).order_by(Model.id)
    return list(session.execute(stmt).scalars())


def get_model(session: Session, model_id: str) -> Model | None:
    stmt = select(Model).where(Model.id == model_id).options(selectinload(Model.layers))
    return session.execute(stmt).scalar_one_or_none()


def list_layers(session: Session, model_id: str) -> list[Layer]:
    stmt = select(Layer).where(Layer.model_id == model_id).order_by(Layer.position, Layer.name)
    return list(session.execute(stmt).scalars())


def get_layer(session: Session, model_id: str, name: str) -> Layer | None:
    stmt = select(Layer).where(Layer.model_id == model_id, Layer.name == name)
    return session.execute(stmt).scalar_one_or_none()


def count_units(session: Session, model_id: str) -> int:
    """Unit rows actually stored for a model (layers.units says how many there should be)."""
    stmt = select(func.count(Unit.id)).join(Layer, Unit.layer_id == Layer.id).where(Layer.model_id == model_id)
    return session.execute(stmt).scalar_one()


# -- jobs -------------------------------------------------------------------------------------
def _is(column: Any, value: Any) -> ColumnElement[bool]:
    # NULL = NULL is not true in SQL; job coordinates use NULL for "whole model" / "no dataset".
    return column.is_(None) if value is None else column == value


def ensure_job(
    session: Session,
    kind: str,
    model_id: str,
    *,
    layer: str | None = None,
    dataset_id: str | None = None,
    shard: int = 0,
    shard_count: int = 1,
    total_items: int = 0,
) -> Job:
    """The job at these coordinates, created pending if it does not exist yet.

    An existing job is returned as it is (done jobs stay done), which is what makes planning
    the same work twice harmless.
    """
    stmt = select(Job).where(
        Job.kind == kind,
        Job.model_id == model_id,
        _is(Job.layer, layer),
        _is(Job.dataset_id, dataset_id),
        Job.shard == shard,
    )
    job = session.execute(stmt).scalar_one_or_none()
    if job is None:
        job = Job(
            kind=kind,
            model_id=model_id,
            layer=layer,
            dataset_id=dataset_id,
            shard=shard,
            shard_count=shard_count,
            total_items=total_items,
            state="pending",
        )
        session.add(job)
        session.flush()
    return job


def claim_job(
    session: Session,
    *,
    job_id: int | None = None,
    kind: str | None = None,
    model_id: str | None = None,
    stale_after: timedelta | None = None,
) -> Job | None:
    """Atomically move one pending job to running and return it (None if nothing to claim).

    Also claims `running` jobs whose last update is older than `stale_after`: their worker
    died, and jobs are resumable, so another worker may pick them up. The claim is a
    compare-and-set UPDATE guarded by the state seen at selection time, so two workers never
    both win the same job, on SQLite or Postgres, without row locks.
    """
    for _ in range(20):
        claimable = Job.state == "pending"
        if stale_after is not None:
            claimable = claimable | and_(Job.state == "running", Job.updated_at < utcnow() - stale_after)
        stmt = select(Job.id, Job.state, Job.updated_at).where(claimable)
        if job_id is not None:
            stmt = stmt.where(Job.id == job_id)
        if kind is not None:
            stmt = stmt.where(Job.kind == kind)
        if model_id is not None:
            stmt = stmt.where(Job.model_id == model_id)
        candidate = session.execute(stmt.order_by(Job.created_at, Job.id).limit(1)).first()
        if candidate is None:
            return None
        now = utcnow()
        result = session.execute(
            update(Job)
            .where(Job.id == candidate.id, Job.state == candidate.state, Job.updated_at == candidate.updated_at)
            .values(state="running", started_at=func.coalesce(Job.started_at, now), updated_at=now, error=None)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            session.flush()
            return session.get(Job, candidate.id, populate_existing=True)
    return None


def update_job_progress(
    session: Session, job_id: int, done_items: int, total_items: int | None = None
) -> None:
    """Record how far a running job got; also its heartbeat (updated_at) for stale detection."""
    if total_items is None:
        total_items = session.execute(select(Job.total_items).where(Job.id == job_id)).scalar_one()
    progress = min(1.0, done_items / total_items) if total_items > 0 else 0.0
    values = {"done_items": done_items, "total_items": total_items, "progress": progress, "updated_at": utcnow()}
    session.execute(update(Job).where(Job.id == job_id).values(values).execution_options(synchronize_session=False))
    session.expire_all()


def finish_job(session: Session, job_id: int, error: str | None = None) -> None:
    """Mark a job done (progress 1) or failed (keeping how far it got, so it can resume)."""
    now = utcnow()
    values: dict[str, Any] = {"finished_at": now, "updated_at": now, "error": error}
    if error is None:
        values.update(state="done", progress=1.0)
    else:
        values.update(state="failed")
    session.execute(update(Job).where(Job.id == job_id).values(values).execution_options(synchronize_session=False))
    session.expire_all()


def reset_job(session: Session, job_id: int) -> None:
    """Put a failed (or any) job back to pending; its recorded progress tells it where to resume."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(state="pending", error=None, finished_at=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.expire_all()


def list_jobs(session: Session, *, model_id: str | None = None, state: str | None = None) -> list[Job]:
    stmt = select(Job).order_by(Job.created_at, Job.id)
    if model_id is not None:
        stmt = stmt.where(Job.model_id == model_id)
    if state is not None:
        stmt = stmt.where(Job.state == state)
    return list(session.execute(stmt).scalars())


def job_age(job: Job, now: datetime | None = None) -> timedelta:
    return (now or utcnow()) - job.updated_at


# -- datasets and images (precompute, issue #4) -------------------------------------------------
# Imports kept local to this section so the block above stays as it was.
from sqlalchemy import insert as _insert  # noqa: E402

from store.models import (  # noqa: E402
    BucketSample,
    Dataset,
    DatasetExample,
    DatasetImage,
    StoredImage,
    WordActivation,
    WordEmbedding,
    WordList,
)

_CHUNK = 5000  # rows per executemany / IN list


def get_dataset(session: Session, dataset_id: str) -> Dataset | None:
    return session.get(Dataset, dataset_id, populate_existing=True)


def list_datasets(session: Session) -> list[Dataset]:
    return list(session.execute(select(Dataset).order_by(Dataset.id)).scalars())


def upsert_dataset(session: Session, dataset_id: str, source_uri: str, kind: str, image_count: int | None = None) -> None:
    """Create or refresh a dataset row; `image_count=None` keeps the stored count."""
    row: dict[str, Any] = {"id": dataset_id, "source_uri": source_uri, "kind": kind, "created_at": utcnow()}
    row["image_count"] = 0 if image_count is None else int(image_count)
    update_columns = ["source_uri", "kind"] + (["image_count"] if image_count is not None else [])
    _upsert(session, Dataset.__table__, [row], ["id"], update_columns)
    session.flush()


def add_images(session: Session, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Store images by content hash (sha256, blob_uri, width, height); an image already known
    keeps its row. Returns {sha256: image id} for every row given."""
    if not rows:
        return {}
    unique = list({row["sha256"]: row for row in rows}.values())
    for start in range(0, len(unique), _CHUNK):
        _upsert(session, StoredImage.__table__, unique[start : start + _CHUNK], ["sha256"], update_columns=[])
    ids: dict[str, int] = {}
    shas = [row["sha256"] for row in unique]
    for start in range(0, len(shas), _CHUNK):
        chunk = shas[start : start + _CHUNK]
        ids.update(session.execute(select(StoredImage.sha256, StoredImage.id).where(StoredImage.sha256.in_(chunk))).all())
    return ids


def set_dataset_images(session: Session, dataset_id: str, pairs: Sequence[tuple[int, int]]) -> None:
    """(position, image id) memberships, upserted on (dataset, position)."""
    rows = [{"dataset_id": dataset_id, "position": int(p), "image_id": int(i)} for p, i in pairs]
    for start in range(0, len(rows), _CHUNK):
        _upsert(session, DatasetImage.__table__, rows[start : start + _CHUNK], ["dataset_id", "position"], ["image_id"])


def trim_dataset(session: Session, dataset_id: str, count: int) -> None:
    """Drop memberships at positions >= count and record the count."""
    session.execute(delete(DatasetImage).where(DatasetImage.dataset_id == dataset_id, DatasetImage.position >= count))
    session.execute(update(Dataset).where(Dataset.id == dataset_id).values(image_count=int(count)))
    session.flush()


def delete_dataset(session: Session, dataset_id: str) -> None:
    """Remove a dataset with its memberships and results (images stay: others may use them)."""
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))
    session.expire_all()


def dataset_items(
    session: Session, dataset_id: str, start: int = 0, stop: int | None = None
) -> list[tuple[int, int, str, str]]:
    """(position, image id, sha256, blob uri) of a dataset's images in position order."""
    stmt = (
        select(DatasetImage.position, StoredImage.id, StoredImage.sha256, StoredImage.blob_uri)
        .join(StoredImage, StoredImage.id == DatasetImage.image_id)
        .where(DatasetImage.dataset_id == dataset_id, DatasetImage.position >= start)
        .order_by(DatasetImage.position)
    )
    if stop is not None:
        stmt = stmt.where(DatasetImage.position < stop)
    return [tuple(row) for row in session.execute(stmt).all()]


# -- precompute results -------------------------------------------------------------------------
def unit_ids(session: Session, layer_id: int) -> dict[int, int]:
    """{unit index: unit id} of a layer."""
    return dict(session.execute(select(Unit.index, Unit.id).where(Unit.layer_id == layer_id)).all())


def update_unit_statistics(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Rows of {id, mean, std, min, max, fraction_active, histogram}: bulk UPDATE by unit id."""
    if rows:
        session.execute(update(Unit), list(rows))


def _replace(session: Session, table: Any, key_filter: Any, unit_ids: Sequence[int], rows: Sequence[dict[str, Any]]) -> None:
    for start in range(0, len(unit_ids), _CHUNK):
        chunk = list(unit_ids[start : start + _CHUNK])
        session.execute(delete(table).where(key_filter, table.unit_id.in_(chunk)))
    for start in range(0, len(rows), _CHUNK):  # Core insert: no ORM bookkeeping per row
        session.execute(_insert(table.__table__), list(rows[start : start + _CHUNK]))


def replace_dataset_examples(session: Session, dataset_id: str, unit_ids: Sequence[int], rows: Sequence[dict[str, Any]]) -> None:
    """Make `rows` the complete examples of these units on this dataset (delete + insert in the
    caller's transaction: a re-run replaces, never duplicates, and drops ranks beyond a new k)."""
    _replace(session, DatasetExample, DatasetExample.dataset_id == dataset_id, unit_ids, rows)


def replace_bucket_samples(session: Session, dataset_id: str, unit_ids: Sequence[int], rows: Sequence[dict[str, Any]]) -> None:
    _replace(session, BucketSample, BucketSample.dataset_id == dataset_id, unit_ids, rows)


def upsert_word_list(session: Session, record: dict[str, Any]) -> None:
    """A word list: id, source, words, font, font_size, image_size."""
    row = {"created_at": utcnow(), **record}
    _upsert(session, WordList.__table__, [row], ["id"], ["source", "words", "font", "font_size", "image_size"])
    session.flush()


def get_word_list(session: Session, word_list_id: str) -> WordList | None:
    return session.get(WordList, word_list_id, populate_existing=True)


def replace_word_activations(session: Session, word_list_id: str, unit_ids: Sequence[int], rows: Sequence[dict[str, Any]]) -> None:
    _replace(session, WordActivation, WordActivation.word_list_id == word_list_id, unit_ids, rows)


def upsert_word_embedding(session: Session, layer_id: int, word_list_id: str, vectors_uri: str, mean_uri: str) -> None:
    row = {"layer_id": layer_id, "word_list_id": word_list_id, "vectors_uri": vectors_uri, "mean_uri": mean_uri}
    _upsert(session, WordEmbedding.__table__, [row], ["layer_id", "word_list_id"])


def get_word_embedding(session: Session, model_id: str, layer: str, word_list_id: str) -> WordEmbedding | None:
    stmt = (
        select(WordEmbedding)
        .join(Layer, Layer.id == WordEmbedding.layer_id)
        .where(Layer.model_id == model_id, Layer.name == layer, WordEmbedding.word_list_id == word_list_id)
    )
    return session.execute(stmt).scalar_one_or_none()


# -- precompute jobs ----------------------------------------------------------------------------
def find_jobs(
    session: Session,
    kind: str,
    model_id: str,
    *,
    layer: str | None = None,
    dataset_id: str | None = None,
) -> list[Job]:
    """Jobs of one kind at (model, layer, dataset), by shard."""
    stmt = (
        select(Job)
        .where(Job.kind == kind, Job.model_id == model_id, _is(Job.layer, layer), _is(Job.dataset_id, dataset_id))
        .order_by(Job.shard)
        .execution_options(populate_existing=True)
    )
    return list(session.execute(stmt).scalars())


def delete_jobs(session: Session, job_ids: Sequence[int]) -> None:
    if job_ids:
        session.execute(delete(Job).where(Job.id.in_(list(job_ids))))
        session.expire_all()


def checkpoint_job(
    session: Session, job_id: int, cursor: int, state_uri: str | None, *, done: bool = False, total_items: int | None = None
) -> None:
    """Record a durable checkpoint: how many items are accounted for and where the state at
    that point lives (and, with done, that the job finished). Also the job's heartbeat. Commit
    it in the same transaction as whatever results it vouches for."""
    now = utcnow()
    if total_items is None:
        total_items = session.execute(select(Job.total_items).where(Job.id == job_id)).scalar_one()
    values: dict[str, Any] = {
        "cursor": cursor,
        "state_uri": state_uri,
        "done_items": cursor,
        "total_items": total_items,
        "progress": min(1.0, cursor / total_items) if total_items else 0.0,
        "updated_at": now,
    }
    if done:
        values.update(state="done", progress=1.0, finished_at=now, error=None)
    session.execute(update(Job).where(Job.id == job_id).values(values).execution_options(synchronize_session=False))


def release_jobs(session: Session, job_ids: Sequence[int]) -> None:
    """Put running jobs whose worker is known dead back to pending (they resume from cursor)."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(list(job_ids)), Job.state == "running")
            .values(state="pending", updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.expire_all()
