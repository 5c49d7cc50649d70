"""Typographic evaluation results: writes for the job and reads for the page (Figure 16)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.orm import Session

from store.models import TypographicResult

COLUMNS = ("kind", "text", "target", "success", "pixel_cover", "images", "setup")


def replace_results(session: Session, model_id: str, dataset_id: str, label_set: str, rows: Sequence[dict[str, Any]]) -> None:
    """Write `rows` ({kind, text, target, success, pixel_cover, images, setup}), replacing any
    stored rows of the same (kind, text): a re-run writes the same rows again, never twice."""
    if not rows:
        return
    keys = [(row["kind"], row["text"]) for row in rows]
    session.execute(delete(TypographicResult).where(
        TypographicResult.model_id == model_id, TypographicResult.dataset_id == dataset_id,
        TypographicResult.label_set == label_set, tuple_(TypographicResult.kind, TypographicResult.text).in_(keys),
    ))
    session.add_all(TypographicResult(model_id=model_id, dataset_id=dataset_id, label_set=label_set,
                                      **{k: row[k] for k in COLUMNS}) for row in rows)


def evaluations(session: Session) -> list[dict[str, Any]]:
    """Each stored (model, dataset, label set) with its number of rows."""
    stmt = (select(TypographicResult.model_id, TypographicResult.dataset_id, TypographicResult.label_set,
                   func.count(TypographicResult.id).label("rows"))
            .group_by(TypographicResult.model_id, TypographicResult.dataset_id, TypographicResult.label_set)
            .order_by(TypographicResult.model_id, TypographicResult.dataset_id, TypographicResult.label_set))
    return [dict(row._mapping) for row in session.execute(stmt)]


def results(session: Session, model_id: str, dataset_id: str, label_set: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The rows of one evaluation, most successful first (rows with no counted picture last)."""
    stmt = select(*(getattr(TypographicResult, c) for c in COLUMNS)).where(
        TypographicResult.model_id == model_id, TypographicResult.dataset_id == dataset_id,
        TypographicResult.label_set == label_set)
    if kind:
        stmt = stmt.where(TypographicResult.kind == kind)
    rows = [dict(row._mapping) for row in session.execute(stmt)]
    return sorted(rows, key=lambda r: (r["success"] is None, -(r["success"] or 0.0), r["pixel_cover"], r["text"]))
