"""Text pools, their cached embeddings per model, and the decompositions written from them.

A pool's embeddings under a model are computed once (`pool_embeddings` calls `compute` only
when no row matches the pool's current texts) and kept as one .npy blob named by a
`text_embeddings` row; a pool whose texts changed gets new embeddings on next use.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from precompute.errors import Problem
from store.blobs import BlobStore, MissingBlob
from store.models import Decomposition, TextEmbedding, TextPool, Unit, utcnow
from store.repository import _upsert  # noqa: PLC2701 -- the store's one upsert

POOL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CHUNK = 500


def texts_sha256(texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()


def add_pool(session: Session, pool_id: str, texts: Sequence[str], source: str) -> tuple[TextPool, bool]:
    """Create the pool; (row, created). The same id with the same texts is a no-op; with other
    texts it is refused (remove the pool first). Flushes only."""
    if not POOL_ID.fullmatch(pool_id):
        raise Problem(422, "bad-pool-id", f"pool id {pool_id!r} must be letters, digits, '.', '_' or '-' (at most 128)")
    if not texts:
        raise Problem(422, "empty-pool", "the pool holds no texts")
    existing = session.get(TextPool, pool_id)
    if existing is not None:
        if list(existing.texts) == list(texts):
            return existing, False
        raise Problem(409, "pool-exists", f"text pool {pool_id!r} exists with other texts ({len(existing.texts):,} from "
                                          f"{existing.source}); remove it first")
    row = TextPool(id=pool_id, source=source, texts=list(texts), created_at=utcnow())
    session.add(row)
    session.flush()
    return row, True


def get_pool(session: Session, pool_id: str) -> TextPool:
    row = session.get(TextPool, pool_id)
    if row is None:
        known = session.execute(select(TextPool.id).order_by(TextPool.id)).scalars().all()
        hint = f"; known pools: {', '.join(known)}" if known else "; add one with `microscope textpools add`"
        raise Problem(404, "unknown-pool", f"no text pool {pool_id!r}{hint}")
    return row


def list_pools(session: Session) -> list[TextPool]:
    return list(session.execute(select(TextPool).order_by(TextPool.id)).scalars())


def remove_pool(session: Session, pool_id: str) -> None:
    session.delete(get_pool(session, pool_id))
    session.flush()


def pool_embeddings(
    session: Session, blobs: BlobStore, model_id: str, pool: TextPool, compute: Callable[[], np.ndarray],
) -> tuple[np.ndarray, bool]:
    """The pool's [texts, d] embeddings under the model, and whether they were computed now.

    Computed (and stored, flushed only) when no row matches the pool's texts or its blob is gone."""
    digest = texts_sha256(pool.texts)
    row = session.execute(
        select(TextEmbedding).where(TextEmbedding.model_id == model_id, TextEmbedding.pool_id == pool.id)
    ).scalar_one_or_none()
    if row is not None and row.texts_sha256 == digest:
        try:
            return np.load(io.BytesIO(blobs.get(row.blob_uri)), allow_pickle=False), False
        except MissingBlob:
            pass
    vectors = np.ascontiguousarray(np.asarray(compute(), dtype=np.float32))
    if vectors.ndim != 2 or vectors.shape[0] != len(pool.texts):
        raise ValueError(f"embeddings of pool {pool.id!r} must be [{len(pool.texts)}, d], got {vectors.shape}")
    buffer = io.BytesIO()
    np.save(buffer, vectors, allow_pickle=False)
    name = blobs.put(buffer.getvalue(), suffix=".npy")
    _upsert(session, TextEmbedding.__table__, [{
        "model_id": model_id, "pool_id": pool.id, "blob_uri": name, "texts_sha256": digest,
        "dimension": int(vectors.shape[1]), "created_at": utcnow(),
    }], ("model_id", "pool_id"))
    session.flush()
    return vectors, True


def stored_embedding(session: Session, model_id: str, source: str) -> tuple[tuple[str, ...], str] | None:
    """(texts, blob name) of the embeddings under the model of a pool from `source` that match
    the pool's current texts (the most recently computed, if several pools qualify), or None."""
    rows = session.execute(
        select(TextPool.texts, TextEmbedding.texts_sha256, TextEmbedding.blob_uri)
        .join(TextEmbedding, TextEmbedding.pool_id == TextPool.id)
        .where(TextEmbedding.model_id == model_id, TextPool.source == source)
        .order_by(TextEmbedding.created_at.desc(), TextEmbedding.id.desc())
    )
    for texts, digest, uri in rows:
        if texts_sha256(texts) == digest:
            return tuple(texts), uri
    return None


def stored_label_set(session: Session, blobs: BlobStore | None, model_id: str, labels: Any, toy: bool,
                     read: Callable[[str], np.ndarray] | None = None) -> Any:
    """`labels` (a precompute.zeroshot.LabelSet) carrying the class embeddings a pool stores for
    them under the model (precompute.zeroshot.pool_source, from_pool), or None when none does.
    `read` gives a blob's array by its name (default: read from `blobs`); a lost blob is None."""
    from precompute.zeroshot import from_pool, pool_source

    source = pool_source(labels, toy)
    found = stored_embedding(session, model_id, source) if source is not None else None
    if found is None:
        return None
    texts, uri = found
    try:
        vectors = read(uri) if read is not None else np.load(io.BytesIO(blobs.get(uri)), allow_pickle=False)
    except MissingBlob:
        return None
    return from_pool(labels, texts, vectors)


def pools_from(session: Session, source: str) -> list[str]:
    """The ids of the pools drawn from `source`, in order."""
    return list(session.execute(select(TextPool.id).where(TextPool.source == source).order_by(TextPool.id)).scalars())


def latest_embedding(session: Session, model_id: str) -> tuple[str, str] | None:
    """(pool id, blob name) of the pool embeddings most recently cached for the model."""
    row = session.execute(
        select(TextEmbedding.pool_id, TextEmbedding.blob_uri).where(TextEmbedding.model_id == model_id)
        .order_by(TextEmbedding.created_at.desc(), TextEmbedding.id.desc()).limit(1)
    ).first()
    return (row[0], row[1]) if row else None


def replace_decompositions(session: Session, pool_id: str, unit_ids: Sequence[int], rows: Sequence[dict[str, Any]]) -> None:
    """Make `rows` ({unit_id, rank, text, coefficient, score}) the whole decompositions of these
    units over this pool: a re-run replaces, never duplicates, and drops ranks beyond a new m."""
    for start in range(0, len(unit_ids), _CHUNK):
        chunk = list(unit_ids[start:start + _CHUNK])
        session.execute(delete(Decomposition).where(Decomposition.pool_id == pool_id, Decomposition.unit_id.in_(chunk)))
    for start in range(0, len(rows), _CHUNK):
        session.execute(Decomposition.__table__.insert(), [{"pool_id": pool_id, **row} for row in rows[start:start + _CHUNK]])


def unit_decomposition(session: Session, unit_id: int, pool_id: str) -> list[tuple[int, str, float, float | None]]:
    """(rank, text, coefficient, score) of one unit's decomposition over one pool."""
    return [tuple(row) for row in session.execute(
        select(Decomposition.rank, Decomposition.text, Decomposition.coefficient, Decomposition.score)
        .where(Decomposition.unit_id == unit_id, Decomposition.pool_id == pool_id).order_by(Decomposition.rank)
    )]


def layer_unit_ids(session: Session, layer_id: int) -> dict[int, int]:
    """unit index -> unit id of a layer."""
    return {index: unit_id for index, unit_id in session.execute(select(Unit.index, Unit.id).where(Unit.layer_id == layer_id))}
