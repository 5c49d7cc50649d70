"""Units' maximal texts (the Distill article's text feature visualization): writes for the
maxtext job, reads for the unit page."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Layer, MaximalText, Unit, utcnow
from store.repository import _upsert  # noqa: PLC2701 -- the store's one upsert

COLUMNS = ("text", "tokens", "score", "start_text", "start_score", "steps", "parameters")


def write_maximal_texts(session: Session, dataset_id: str, rows: Sequence[dict[str, Any]]) -> None:
    """Upsert `rows` ({unit_id, text, tokens, score, start_text, start_score, steps,
    parameters}) for the directions over `dataset_id`: one row per unit, a re-run replaces it."""
    _upsert(session, MaximalText.__table__,
            [{"unit_id": row["unit_id"], "dataset_id": dataset_id, **{c: row[c] for c in COLUMNS}, "created_at": utcnow()}
             for row in rows], ("unit_id",))


def maximal_text_of(session: Session, unit_id: int) -> dict[str, Any] | None:
    """The unit's maximal text, or None when none is stored."""
    stmt = select(MaximalText.dataset_id, *(getattr(MaximalText, c) for c in COLUMNS)).where(MaximalText.unit_id == unit_id)
    row = session.execute(stmt).mappings().one_or_none()
    return dict(row) if row is not None else None


def layer_maximal_texts(session: Session, model_id: str, layer: str) -> dict[int, dict[str, Any]]:
    """{unit index: row} of a layer's maximal texts."""
    stmt = (select(Unit.index, MaximalText.dataset_id, *(getattr(MaximalText, c) for c in COLUMNS))
            .join(Unit, Unit.id == MaximalText.unit_id).join(Layer, Layer.id == Unit.layer_id)
            .where(Layer.model_id == model_id, Layer.name == layer).order_by(Unit.index))
    return {row["index"]: {k: v for k, v in row.items() if k != "index"} for row in session.execute(stmt).mappings()}
