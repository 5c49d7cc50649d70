"""The precompute jobs and their progress."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.pages.common import iso, offset, pagination
from app.urls import Urls
from store import queries

STATES = ("running", "pending", "failed", "done")


def _job(row: dict[str, Any], urls: Urls) -> dict[str, Any]:
    return {
        "id": row["id"],
        "kind": row["kind"],
        "model": row["model_id"],
        "layer": row["layer"],
        "dataset": row["dataset_id"],
        "shard": row["shard"],
        "shard_count": row["shard_count"],
        "state": row["state"],
        "progress": row["progress"],
        "done_items": row["done_items"],
        "total_items": row["total_items"],
        "error": row["error"],
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "updated_at": iso(row["updated_at"]),
        "model_url": urls.html.model(row["model_id"]),
        "layer_url": urls.html.layer(row["model_id"], row["layer"]) if row["layer"] else None,
    }


def jobs_page(
    session: Session, urls: Urls, *, state: str | None = None, model_id: str | None = None, kind: str | None = None,
    page: int = 1, per_page: int = 100,
) -> dict[str, Any]:
    total = queries.count_jobs(session, state=state, model_id=model_id, kind=kind)
    rows = queries.jobs_page(session, offset(page, per_page), per_page, state=state, model_id=model_id, kind=kind)
    counts = queries.jobs_by_state(session, model_id=model_id, kind=kind)
    return {
        "jobs": [_job(row, urls) for row in rows],
        "counts": {s: counts.get(s, 0) for s in STATES},
        "filters": {"state": state, "model": model_id, "kind": kind},
        "kinds": queries.job_kinds(session),
        "pagination": pagination(urls, Urls.jobs, total=total, page=page, per_page=per_page, state=state, model=model_id,
                                 kind=kind),
        "api_url": urls.api.jobs(state=state, model=model_id, kind=kind, page=page if page != 1 else None),
    }
