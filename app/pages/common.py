"""What several pages share: paging, statistics, timestamps, unit thumbnails, and finding the
thing a URL names."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.urls import Urls
from precompute.errors import Problem
from store import annotations, queries
from store.models import Annotation, Collection

DEFAULT_PER_PAGE = 48
MAX_PER_PAGE = 200


def pagination(
    urls: Urls, route: Callable[..., str], *args: Any, total: int, page: int, per_page: int, **params: Any
) -> dict[str, Any]:
    """Where a listing stands and its neighbouring pages, as HTML pages and in the API.
    `route` is the Urls method of the listing (`Urls.search`), `args` its path arguments."""
    pages = max(1, math.ceil(total / per_page))

    def link(target: Urls, p: int | None) -> str | None:
        if p is None:
            return None
        return route(target, *args, **params, page=p, per_page=per_page)

    nxt = page + 1 if page < pages else None
    prev = page - 1 if page > 1 else None
    return {
        "page": page,
        "per_page": per_page,
        "total": total,
        "pages": pages,
        "next_url": link(urls.api, nxt),
        "prev_url": link(urls.api, prev),
        "next_page_url": link(urls.html, nxt),
        "prev_page_url": link(urls.html, prev),
    }


def png_data_url(data: bytes) -> str:
    """A PNG the model service made (the picture as the model saw it, a heat map), inline in the page."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def offset(page: int, per_page: int) -> int:
    return (page - 1) * per_page


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def stats(row: dict[str, Any]) -> dict[str, Any] | None:
    if row.get("max") is None and row.get("mean") is None:
        return None
    return {key: row.get(key) for key in ("mean", "std", "min", "max", "fraction_active")}


def spatial_of(row: dict[str, Any]) -> list[int] | None:
    return [row["spatial_h"], row["spatial_w"]] if row["spatial_h"] is not None else None


def cell(position: int | None, spatial: list[int] | None) -> dict[str, Any] | None:
    """The grid cell of a flat spatial position, in rows, columns and percent of the image."""
    if position is None or not spatial:
        return None
    h, w = spatial
    if not 0 <= position < h * w:
        return None
    row, col = divmod(position, w)
    return {"row": row, "col": col, "x": col / w * 100, "y": row / h * 100, "w": 100 / w, "h": 100 / h}


# What a listed unit shows when it has neither a feature visualization nor a dataset example.
NO_THUMBNAIL: dict[str, str | None] = {"thumbnail_url": None, "thumbnail_kind": None}


def unit_thumbnails(session: Session, urls: Urls, unit_ids: Iterable[int]) -> dict[int, dict[str, str | None]]:
    """The picture of each unit wherever a page lists it (the layer grid, nearest units,
    search, collections, the probe), as the `thumbnail_url` and `thumbnail_kind` of its entry.
    Units without a picture are absent: look them up with `.get(unit_id, NO_THUMBNAIL)`."""
    out: dict[int, dict[str, str | None]] = {}
    for unit_id, thumbnail in queries.unit_thumbnails(session, unit_ids).items():
        url = (urls.crop(thumbnail.model_id, thumbnail.blob_uri, thumbnail.crop_box) if thumbnail.crop_box
               else urls.blob(thumbnail.blob_uri))
        if url is not None:
            out[unit_id] = {"thumbnail_url": url, "thumbnail_kind": thumbnail.kind}
    return out


# -- the things URLs name ------------------------------------------------------------------------
def require_model(session: Session, model_id: str) -> dict[str, Any]:
    model = queries.model_row(session, model_id)
    if model is None:
        raise Problem(404, "unknown-model", f"No model with id {model_id!r} is registered.")
    return model


def require_layer(session: Session, model_id: str, layer_name: str) -> dict[str, Any]:
    layer = queries.layer_row(session, model_id, layer_name)
    if layer is None:
        known = ", ".join(l["name"] for l in queries.layers_of(session, [model_id]).get(model_id, [])[:12])
        raise Problem(404, "unknown-layer", f"Model {model_id!r} has no layer {layer_name!r}. Layers include: {known}.")
    return layer


def require_unit(session: Session, model_id: str, layer: str, index: int) -> dict[str, Any]:
    """The unit's core row (ids, label, statistics), for writes that name a unit."""
    row = queries.unit_core(session, model_id, layer, index)
    if row is None:
        raise Problem(404, "unknown-unit", f"No unit {model_id}/{layer}/{index}.")
    return row


def require_collection(session: Session, collection_id: str) -> Collection:
    row = session.get(Collection, collection_id)
    if row is None:
        raise Problem(404, "unknown-collection", f"No collection named {collection_id!r}.")
    return row


def require_annotation(session: Session, annotation_id: int) -> Annotation:
    row = annotations.get_annotation(session, annotation_id)
    if row is None:
        raise Problem(404, "unknown-annotation", f"No annotation {annotation_id}.")
    return row
