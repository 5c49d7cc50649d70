"""Idempotent writes on both backends: re-running never duplicates, and never loses work."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from store import repository
from store.models import Job, Layer, Model, Unit
from tests.conftest import toy_model


def _counts(session: Session) -> tuple[int, int, int]:
    return tuple(session.execute(select(func.count()).select_from(t)).scalar_one() for t in (Model, Layer, Unit))  # type: ignore[return-value]


def test_upsert_model_twice_leaves_one_row_each(session: Session) -> None:
    record, layers = toy_model()
    started = time.perf_counter()
    model = repository.upsert_model(session, record, layers)
    session.commit()
    elapsed = time.perf_counter() - started
    expected_units = sum(layer["units"] for layer in layers)
    assert _counts(session) == (1, 3, expected_units)
    assert [layer.name for layer in model.layers] == ["layer3", "layer4", "attnpool"]
    assert model.layers[0].spatial == (14, 14) and model.layers[2].spatial is None
    # 7168 unit rows must go in as one bulk insert, not row by row.
    assert elapsed < 10, f"registering took {elapsed:.1f}s"

    record["description"] = "updated"
    again = repository.upsert_model(session, record, layers)
    session.commit()
    assert _counts(session) == (1, 3, expected_units)
    assert again.description == "updated"
    assert again.created_at == model.created_at
    assert repository.count_units(session, "toy-rn") == expected_units

    indices = session.execute(
        select(Unit.index).join(Layer).where(Layer.name == "layer4").order_by(Unit.index)
    ).scalars().all()
    assert indices == list(range(2048))


def test_reregistering_keeps_unit_statistics_and_follows_layer_changes(session: Session) -> None:
    record, layers = toy_model(big_layer_units=16)
    repository.upsert_model(session, record, layers)
    session.commit()
    layer4 = repository.get_layer(session, "toy-rn", "layer4")
    assert layer4 is not None
    session.execute(update(Unit).where(Unit.layer_id == layer4.id, Unit.index == 3).values(label="dog ears", mean=0.5))
    session.commit()

    # Same model with attnpool shrunk and layer3 gone.
    layers = [dict(layers[1]), dict(layers[2], units=8)]
    repository.upsert_model(session, record, layers)
    session.commit()
    assert [layer.name for layer in repository.list_layers(session, "toy-rn")] == ["layer4", "attnpool"]
    assert _counts(session) == (1, 2, 2048 + 8)
    unit = session.execute(select(Unit).where(Unit.layer_id == layer4.id, Unit.index == 3)).scalar_one()
    assert (unit.label, unit.mean) == ("dog ears", 0.5)


def test_two_models_and_reads(session: Session) -> None:
    for model_id in ("b-model", "a-model"):
        record, layers = toy_model(model_id, big_layer_units=4)
        repository.upsert_model(session, record, layers)
    session.commit()
    assert [m.id for m in repository.list_models(session)] == ["a-model", "b-model"]
    assert repository.get_model(session, "nope") is None
    assert repository.list_layers(session, "nope") == []


def test_upsert_model_validates(session: Session) -> None:
    record, layers = toy_model()
    with pytest.raises(ValueError, match="unknown model fields"):
        repository.upsert_model(session, {**record, "colour": "red"}, layers)
    with pytest.raises(ValueError, match="source"):
        repository.upsert_model(session, {**record, "source": "internet"}, layers)
    with pytest.raises(ValueError, match="duplicate"):
        repository.upsert_model(session, record, [layers[0], layers[0]])


def test_jobs_lifecycle(session: Session) -> None:
    record, layers = toy_model(big_layer_units=4)
    repository.upsert_model(session, record, layers)
    first = repository.ensure_job(session, "featureviz", "toy-rn", layer="layer4", shard=0, shard_count=2, total_items=10)
    whole = repository.ensure_job(session, "examples", "toy-rn")  # NULL layer and dataset
    session.commit()
    # Planning again finds the same jobs, NULL coordinates included.
    assert repository.ensure_job(session, "featureviz", "toy-rn", layer="layer4", shard=0).id == first.id
    assert repository.ensure_job(session, "examples", "toy-rn").id == whole.id
    assert len(repository.list_jobs(session)) == 2

    claimed = repository.claim_job(session, kind="featureviz")
    assert claimed is not None and claimed.id == first.id and claimed.state == "running"
    assert claimed.started_at is not None
    assert repository.claim_job(session, kind="featureviz") is None  # nothing else pending

    repository.update_job_progress(session, first.id, 4)
    session.commit()
    job = session.get(Job, first.id)
    assert job is not None and (job.done_items, job.progress) == (4, pytest.approx(0.4))

    # A worker that stops heartbeating loses its job to the next one.
    assert repository.claim_job(session, kind="featureviz", stale_after=timedelta(hours=1)) is None
    stolen = repository.claim_job(session, kind="featureviz", stale_after=timedelta(0))
    assert stolen is not None and stolen.id == first.id and stolen.done_items == 4

    repository.finish_job(session, first.id, error="CUDA out of memory")
    session.commit()
    job = session.get(Job, first.id)
    assert job is not None and job.state == "failed" and job.error == "CUDA out of memory"

    repository.reset_job(session, first.id)
    assert repository.claim_job(session, job_id=first.id) is not None
    repository.finish_job(session, first.id)
    session.commit()
    job = session.get(Job, first.id)
    assert job is not None and (job.state, job.progress, job.error) == ("done", 1.0, None)
    assert job.finished_at is not None and job.finished_at >= job.started_at
    assert [j.id for j in repository.list_jobs(session, state="pending")] == [whole.id]
