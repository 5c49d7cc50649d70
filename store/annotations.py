"""What people write into the store: API tokens, labels, notes and collections.

Like store.repository, these functions flush but never commit; the route that calls them
owns the transaction. Validation that a person can act on raises a `Problem` with a sentence.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from precompute.errors import Problem
from store.models import Annotation, ApiToken, Collection, CollectionUnit, EditStamp, Unit, utcnow

TOKEN_PREFIX = "msk_"
COLLECTION_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
MAX_TEXT = 2000
MAX_LABEL = 200


# -- tokens --------------------------------------------------------------------------------------
def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(session: Session, name: str) -> tuple[ApiToken, str]:
    """A new token for `name`; returns the row and the token itself, which is never stored."""
    name = name.strip()
    if not name or len(name) > 128:
        raise Problem(422, "bad-token-name", "a token needs a name of 1 to 128 characters (who holds it)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, token_hash=hash_token(token), prefix=token[:12])
    session.add(row)
    session.flush()
    return row, token


def verify_token(session: Session, token: str | None, *, touch: bool = True) -> ApiToken | None:
    """The live (not revoked) token row matching `token`, or None.

    Tokens are looked up by their SHA-256, so the comparison never sees the secret itself;
    a token is 32 random bytes, which leaves nothing for a timing attack to guess at.
    """
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return None
    row = session.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    if touch:
        row.last_used_at = utcnow()
        session.flush()
    return row


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.execute(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)).scalars())


def revoke_token(session: Session, prefix_or_id: str) -> list[ApiToken]:
    """Revoke the live tokens whose prefix starts with `prefix_or_id` (or whose id it is)."""
    stmt = select(ApiToken).where(ApiToken.revoked_at.is_(None))
    if prefix_or_id.isdigit():
        stmt = stmt.where(ApiToken.id == int(prefix_or_id))
    else:
        if len(prefix_or_id) < 6:
            raise Problem(422, "ambiguous-token", "give at least 6 characters of the token's prefix, or its id")
        stmt = stmt.where(ApiToken.prefix.startswith(prefix_or_id[:12], autoescape=True))
    rows = list(session.execute(stmt).scalars())
    now = utcnow()
    for row in rows:
        row.revoked_at = now
    session.flush()
    return rows


# -- labels and notes ----------------------------------------------------------------------------
def _edited(session: Session) -> None:
    """Count one more edit (see store.queries.unit_core_and_stamps), in the write's own transaction."""
    session.execute(update(EditStamp).where(EditStamp.id == 1).values(edits=EditStamp.edits + 1))


def _clean(text: str, limit: int, what: str) -> str:
    text = (text or "").strip()
    if not text:
        raise Problem(422, f"empty-{what}", f"the {what} is empty")
    if len(text) > limit:
        raise Problem(422, f"long-{what}", f"the {what} has {len(text)} characters; the limit is {limit}")
    if any(ord(c) < 32 and c not in "\n\t" for c in text):
        raise Problem(422, f"bad-{what}", f"the {what} contains control characters")
    return text


def set_label(session: Session, unit_id: int, text: str, author: str) -> Annotation:
    """Give a unit its current label; the label history is kept as annotations of kind label."""
    text = _clean(text, MAX_LABEL, "label")
    session.execute(update(Unit).where(Unit.id == unit_id).values(label=text).execution_options(synchronize_session=False))
    row = Annotation(unit_id=unit_id, kind="label", text=text, author=author)
    session.add(row)
    _edited(session)
    session.flush()
    return row


def clear_label(session: Session, unit_id: int) -> None:
    session.execute(update(Unit).where(Unit.id == unit_id).values(label=None).execution_options(synchronize_session=False))
    _edited(session)


def add_note(session: Session, unit_id: int, text: str, author: str) -> Annotation:
    row = Annotation(unit_id=unit_id, kind="note", text=_clean(text, MAX_TEXT, "note"), author=author)
    session.add(row)
    _edited(session)
    session.flush()
    return row


def get_annotation(session: Session, annotation_id: int) -> Annotation | None:
    return session.get(Annotation, annotation_id)


def edit_note(session: Session, annotation: Annotation, text: str, author: str) -> Annotation:
    if annotation.kind != "note":
        raise Problem(422, "not-a-note", "labels are changed by setting a new label, not by editing history")
    if annotation.author != author:
        raise Problem(403, "not-your-note", f"only {annotation.author} can edit this note")
    annotation.text = _clean(text, MAX_TEXT, "note")
    annotation.updated_at = utcnow()
    _edited(session)
    session.flush()
    return annotation


def delete_note(session: Session, annotation: Annotation, author: str) -> None:
    if annotation.kind != "note":
        raise Problem(422, "not-a-note", "only notes can be deleted; label history stays")
    if annotation.author != author:
        raise Problem(403, "not-your-note", f"only {annotation.author} can delete this note")
    session.delete(annotation)
    _edited(session)
    session.flush()


# -- collections ---------------------------------------------------------------------------------
def create_collection(session: Session, collection_id: str, title: str, description: str, author: str) -> Collection:
    collection_id = (collection_id or "").strip().lower()
    if not COLLECTION_ID.match(collection_id):
        raise Problem(
            422, "bad-collection-id", "a collection id is 1-64 lowercase letters, digits or '-', starting with a letter or digit"
        )
    if session.get(Collection, collection_id) is not None:
        raise Problem(409, "collection-exists", f"a collection named {collection_id!r} already exists")
    row = Collection(
        id=collection_id,
        title=_clean(title, MAX_LABEL, "title"),
        description=(description or "").strip()[:MAX_TEXT],
        author=author,
    )
    session.add(row)
    _edited(session)
    try:
        session.flush()
    except IntegrityError:  # created concurrently between the check and the insert
        session.rollback()
        raise Problem(409, "collection-exists", f"a collection named {collection_id!r} already exists") from None
    return row


def update_collection(session: Session, collection: Collection, title: str | None, description: str | None) -> Collection:
    if title is not None:
        collection.title = _clean(title, MAX_LABEL, "title")
    if description is not None:
        collection.description = description.strip()[:MAX_TEXT]
    collection.updated_at = utcnow()
    _edited(session)
    session.flush()
    return collection


def delete_collection(session: Session, collection: Collection) -> None:
    session.execute(delete(CollectionUnit).where(CollectionUnit.collection_id == collection.id))
    session.delete(collection)
    _edited(session)
    session.flush()


def add_to_collection(session: Session, collection: Collection, unit_id: int, note: str = "") -> bool:
    """Append a unit (True), or leave it where it is if already there (False)."""
    note = _clean(note, MAX_TEXT, "note") if (note or "").strip() else ""
    exists = session.execute(
        select(CollectionUnit.id).where(CollectionUnit.collection_id == collection.id, CollectionUnit.unit_id == unit_id)
    ).first()
    if exists:
        return False
    position = session.execute(
        select(func.coalesce(func.max(CollectionUnit.position) + 1, 0)).where(CollectionUnit.collection_id == collection.id)
    ).scalar_one()
    session.add(CollectionUnit(collection_id=collection.id, unit_id=unit_id, position=position, note=note))
    collection.updated_at = utcnow()
    _edited(session)
    session.flush()
    return True


def remove_from_collection(session: Session, collection: Collection, unit_id: int) -> bool:
    result = session.execute(
        delete(CollectionUnit).where(CollectionUnit.collection_id == collection.id, CollectionUnit.unit_id == unit_id)
    )
    collection.updated_at = utcnow()
    _edited(session)
    session.flush()
    return bool(result.rowcount)


def as_dict(row: Annotation) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "text": row.text,
        "author": row.author,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
