"""A layer's page (the grid of its units, paged and sorted) and its bulk export."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy.orm import Session

from app.pages.common import (
    DEFAULT_PER_PAGE, NO_THUMBNAIL, cell, offset, pagination, require_layer, require_model, spatial_of, stats,
    unit_thumbnails,
)
from app.pages.models import layer_entry
from app.pages.words import ordered_word_lists
from app.urls import Urls
from precompute.errors import Problem
from store import queries


def _missing(computed: dict[str, int]) -> list[str]:
    missing = []
    if computed["featureviz"] == 0:
        missing.append("No feature visualizations have been computed for this layer yet"
                       + ("; thumbnails show each unit's strongest dataset example." if computed["examples"] else "."))
    if computed["statistics"] == 0:
        missing.append("No activation statistics yet, so sorting by activation falls back to index order.")
    return missing


def _list_order(session: Session, model_id: str, unit_ids: list[int]) -> list[str]:
    """The units' word lists in the order their unit pages show them (the default first)."""
    return [entry["id"] for entry in ordered_word_lists(session, model_id, queries.word_lists_of_units(session, unit_ids))]


def layer_page(
    session: Session, model_id: str, layer_name: str, urls: Urls, *, sort: str = "index", page: int = 1,
    per_page: int = DEFAULT_PER_PAGE,
) -> dict[str, Any]:
    model = require_model(session, model_id)
    layer = require_layer(session, model_id, layer_name)
    if sort not in queries.UNIT_SORTS:
        raise Problem(422, "bad-sort", f"sort must be one of {', '.join(queries.UNIT_SORTS)}")
    total = queries.count_layer_units(session, layer["id"])
    rows = queries.units_page(session, layer["id"], sort, offset(page, per_page), per_page)
    ids = [row["id"] for row in rows]
    thumbs = unit_thumbnails(session, urls, ids)
    words = queries.top_words(session, ids, list_order=_list_order(session, model_id, ids))
    units = []
    for row in rows:
        units.append(
            {
                "index": row["index"],
                "label": row["label"],
                "top_words": words.get(row["id"], []),
                "max": row["max"],
                "mean": row["mean"],
                "fraction_active": row["fraction_active"],
                **thumbs.get(row["id"], NO_THUMBNAIL),
                **urls.unit_links(model_id, layer_name, row["index"]),
            }
        )
    entry = layer_entry(layer, model_id, urls, queries.coverage(session, [layer["id"]])[layer["id"]])
    sort_param = sort if sort != "index" else None
    return {
        "model": {"id": model["id"], "arch": model["arch"], **urls.model_links(model_id)},
        "layer": entry,
        "sort": sort,
        "sorts": list(queries.UNIT_SORTS),
        "units": units,
        "pagination": pagination(urls, Urls.layer, model_id, layer_name, total=total, page=page, per_page=per_page,
                                 sort=sort_param),
        "export_url": urls.layer_export(model_id, layer_name),
        "missing": _missing(entry["computed"]),
        "api_url": urls.api.layer(model_id, layer_name, sort=sort_param, page=page if page != 1 else None,
                                  per_page=per_page if per_page != DEFAULT_PER_PAGE else None),
    }


def export_layer(session: Session, model_id: str, layer_name: str, urls: Urls, chunk: int = 256) -> Iterator[dict[str, Any]]:
    """Every unit of a layer with its statistics, label, top words, main visualization, top
    dataset examples and decomposition: one dict per unit, read a chunk of units at a time. The
    top words are those of the word list the unit's page shows first."""
    require_model(session, model_id)
    layer = require_layer(session, model_id, layer_name)
    spatial = spatial_of(layer)
    total = queries.count_layer_units(session, layer["id"])
    for start in range(0, total, chunk):
        rows = queries.units_page(session, layer["id"], "index", start, chunk)
        ids = [row["id"] for row in rows]
        extra = queries.export_details(session, ids, list_order=_list_order(session, model_id, ids))
        featureviz = queries.main_featureviz(session, ids)
        for row in rows:
            detail = extra.get(row["id"], {})
            yield {
                "model": model_id,
                "layer": layer_name,
                "index": row["index"],
                "label": row["label"],
                "stats": stats(row),
                "featureviz_url": urls.blob(featureviz.get(row["id"])),
                "word_list": detail.get("word_list"),
                "words": [{"word": w, "activation": a} for w, a in detail.get("words", [])],
                "examples": [
                    {"sign": s, "rank": r, "activation": a, "image_url": urls.blob(u), "cell": cell(p, spatial)}
                    for s, r, a, u, p in detail.get("examples", [])
                ],
                "decomposition": [{"text": t, "coefficient": c} for t, c in detail.get("decomposition", [])],
                **urls.unit_links(model_id, layer_name, row["index"]),
            }
