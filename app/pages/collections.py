"""Collections of units: the list, and one collection with its units."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.pages.common import DEFAULT_PER_PAGE, NO_THUMBNAIL, iso, offset, pagination, unit_thumbnails
from app.urls import Urls
from precompute.errors import Problem
from store import queries


def collections_index(session: Session, urls: Urls, page: int = 1, per_page: int = DEFAULT_PER_PAGE) -> dict[str, Any]:
    total = queries.count_collections(session)
    rows = queries.collections_page(session, offset(page, per_page), per_page)
    return {
        "collections": [
            {
                "id": row["id"],
                "title": row["title"],
                "description": row["description"],
                "author": row["author"],
                "unit_count": row["unit_count"],
                "created_at": iso(row["created_at"]),
                "updated_at": iso(row["updated_at"]),
                **urls.collection_links(row["id"]),
            }
            for row in rows
        ],
        "pagination": pagination(urls, Urls.collections, total=total, page=page, per_page=per_page),
        "api_url": urls.api.collections(page=page if page != 1 else None),
    }


def collection_detail(
    session: Session, collection_id: str, urls: Urls, page: int = 1, per_page: int = DEFAULT_PER_PAGE
) -> dict[str, Any]:
    row = queries.collection_row(session, collection_id)
    if row is None:
        raise Problem(404, "unknown-collection", f"No collection named {collection_id!r}.")
    total = queries.count_collection_units(session, collection_id)
    members = queries.collection_units(session, collection_id, offset(page, per_page), per_page)
    thumbs = unit_thumbnails(session, urls, [m["unit_id"] for m in members])
    words = queries.top_words(session, [m["unit_id"] for m in members])
    return {
        "id": row["id"],
        "title": row["title"],
        "description": row["description"],
        "author": row["author"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "units": [
            {
                "model": m["model_id"],
                "layer": m["layer"],
                "index": m["index"],
                "label": m["label"],
                "note": m["note"],
                "top_words": words.get(m["unit_id"], []),
                **thumbs.get(m["unit_id"], NO_THUMBNAIL),
                **urls.unit_links(m["model_id"], m["layer"], m["index"]),
            }
            for m in members
        ],
        "pagination": pagination(urls, Urls.collection, collection_id, total=total, page=page, per_page=per_page),
        "url": urls.html.collection(collection_id),
        "api_url": urls.api.collection(collection_id, page=page if page != 1 else None),
    }
