"""One function per page that builds the page's data as plain JSON-able dicts.

Datasette style: the HTML route and its JSON twin both call the same builder, so whatever the
page shows is exactly what the API returns. Builders take the session and the app's root path
(so links stay right behind a reverse proxy mounted under a prefix) and never see a request.
Pages render whatever has been computed and say plainly what has not: every builder that
can come up empty fills a `missing` list with sentences.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.orm import Session

from store import queries
from store.blobs import MissingBlob, blob_name
from app.blob_presence import is_present
from app.cache import TTLCache
from app.svg import normalise_histogram
from app.vectors import VectorCache

API_PREFIX = "/api/v1"
DEFAULT_PER_PAGE = 48
MAX_PER_PAGE = 200
NEAREST_UNITS = 12


class NotFound(Exception):
    """A named thing does not exist. Rendered as a JSON 404 for the API, an HTML 404 for pages."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # stable, machine-readable: "unknown-model"
        self.detail = detail  # human-readable sentence


class BadQuery(Exception):
    """A query that cannot be answered as asked (422), with extra fields for programs."""

    def __init__(self, reason: str, detail: str, status: int = 422, **extra: Any) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status
        self.extra = extra


# -- small helpers -------------------------------------------------------------------------------
def url(base: str, path: str, **params: Any) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None and v != ""})
    return f"{base}{path}" + (f"?{query}" if query else "")


def blob_url(uri: str | None, base: str) -> str | None:
    """The served URL of a stored blob name; None when there is none, or when the blob store
    has lost its bytes (the page shows a placeholder, the JSON says null; see app.blob_presence)."""
    if not uri:
        return None
    try:
        name = blob_name(uri)
    except ValueError:
        return None
    return f"{base}/blobs/{name}" if is_present(name) else None


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def unit_path(model_id: str, layer: str, index: int) -> str:
    return f"/models/{model_id}/{layer}/{index}"


def unit_links(base: str, model_id: str, layer: str, index: int) -> dict[str, str]:
    path = unit_path(model_id, layer, index)
    return {"url": f"{base}{path}", "api_url": f"{base}{API_PREFIX}{path}"}


def pagination(base: str, path: str, total: int, page: int, per_page: int, **params: Any) -> dict[str, Any]:
    pages = max(1, math.ceil(total / per_page))

    def link(api: bool, p: int | None) -> str | None:
        if p is None:
            return None
        return url(base, (API_PREFIX if api else "") + path, **params, page=p, per_page=per_page)

    nxt = page + 1 if page < pages else None
    prev = page - 1 if page > 1 else None
    return {
        "page": page,
        "per_page": per_page,
        "total": total,
        "pages": pages,
        "next_url": link(True, nxt),
        "prev_url": link(True, prev),
        "next_page_url": link(False, nxt),
        "prev_page_url": link(False, prev),
    }


def _offset(page: int, per_page: int) -> int:
    return (page - 1) * per_page


def _stats(row: dict[str, Any]) -> dict[str, Any] | None:
    if row.get("max") is None and row.get("mean") is None:
        return None
    return {key: row.get(key) for key in ("mean", "std", "min", "max", "fraction_active")}


# -- models --------------------------------------------------------------------------------------
def _layer_entry(layer: dict[str, Any], model_id: str, base: str, coverage: dict[str, int] | None) -> dict[str, Any]:
    spatial = [layer["spatial_h"], layer["spatial_w"]] if layer["spatial_h"] is not None else None
    path = f"/models/{model_id}/{layer['name']}"
    entry = {
        "name": layer["name"],
        "kind": layer["kind"],
        "units": layer["units"],
        "spatial": spatial,
        "has_class_token": bool(layer["has_class_token"]),
        "position": layer["position"],
        "url": f"{base}{path}",
        "api_url": f"{base}{API_PREFIX}{path}",
    }
    if coverage is not None:
        entry["computed"] = coverage
    return entry


def _model_summary(model: dict[str, Any], layers: list[dict[str, Any]], base: str) -> dict[str, Any]:
    return {
        "id": model["id"],
        "arch": model["arch"],
        "source": model["source"],
        "pretrained_tag": model["pretrained_tag"],
        "checkpoint_sha256": model["checkpoint_sha256"],
        "image_size": model["image_size"],
        "description": model["description"] or "",
        "layer_count": len(layers),
        "unit_count": sum(layer["units"] for layer in layers),
        "created_at": iso(model["created_at"]),
        "url": f"{base}/models/{model['id']}",
        "api_url": f"{base}{API_PREFIX}/models/{model['id']}",
    }


def _computed_totals(layers: list[dict[str, Any]]) -> dict[str, int]:
    totals = dict.fromkeys(queries.COVERAGE_KINDS, 0)
    for layer in layers:
        for kind, count in layer.get("computed", {}).items():
            totals[kind] += count
    return totals


def models_index(session: Session, base: str = "", page: int = 1, per_page: int = 50) -> dict[str, Any]:
    total = queries.count_models(session)
    rows = queries.models_page(session, _offset(page, per_page), per_page)
    layers = queries.layers_of(session, [m["id"] for m in rows])
    coverage = queries.coverage(session, [layer["id"] for ls in layers.values() for layer in ls])
    models = []
    for model in rows:
        model_layers = layers.get(model["id"], [])
        entries = [_layer_entry(layer, model["id"], base, coverage[layer["id"]]) for layer in model_layers]
        summary = _model_summary(model, model_layers, base)
        summary["layers"] = entries
        summary["computed"] = _computed_totals(entries)
        models.append(summary)
    return {
        "models": models,
        "count": len(models),
        "pagination": pagination(base, "/models", total, page, per_page),
        "api_url": f"{base}{API_PREFIX}/models",
    }


def _require_model(session: Session, model_id: str) -> dict[str, Any]:
    model = queries.model_row(session, model_id)
    if model is None:
        raise NotFound("unknown-model", f"No model with id {model_id!r} is registered.")
    return model


def _require_layer(session: Session, model_id: str, layer_name: str) -> dict[str, Any]:
    layer = queries.layer_row(session, model_id, layer_name)
    if layer is None:
        known = ", ".join(l["name"] for l in queries.layers_of(session, [model_id]).get(model_id, [])[:12])
        raise NotFound("unknown-layer", f"Model {model_id!r} has no layer {layer_name!r}. Layers include: {known}.")
    return layer


def _progress(rows: list[dict[str, Any]]) -> dict[str | None, list[dict[str, Any]]]:
    """Jobs per layer and kind: shards by state, and the fraction of items done."""
    merged: dict[tuple[str | None, str], dict[str, Any]] = {}
    for row in rows:
        entry = merged.setdefault(
            (row["layer"], row["kind"]), {"kind": row["kind"], "shards": {}, "done_items": 0, "total_items": 0}
        )
        entry["shards"][row["state"]] = row["shards"]
        entry["done_items"] += int(row["done_items"] or 0)
        entry["total_items"] += int(row["total_items"] or 0)
    out: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for (layer, _kind), entry in sorted(merged.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        total = entry["total_items"]
        entry["progress"] = round(entry["done_items"] / total, 4) if total else (1.0 if set(entry["shards"]) == {"done"} else 0.0)
        out[layer].append(entry)
    return out


def model_detail(session: Session, model_id: str, base: str = "") -> dict[str, Any]:
    model = _require_model(session, model_id)
    layers = queries.layers_of(session, [model_id]).get(model_id, [])
    coverage = queries.coverage(session, [layer["id"] for layer in layers])
    progress = _progress(queries.job_progress(session, [model_id]))
    entries = []
    for layer in layers:
        entry = _layer_entry(layer, model_id, base, coverage[layer["id"]])
        entry["jobs"] = progress.get(layer["name"], [])
        entries.append(entry)
    detail = _model_summary(model, layers, base)
    detail.update(
        checkpoint_path=model["checkpoint_path"],
        preprocess=model["preprocess"],
        layers=entries,
        computed=_computed_totals(entries),
        model_jobs=progress.get(None, []),
        jobs_url=url(base, "/jobs", model=model_id),
    )
    return detail


# -- a layer: the grid of units ------------------------------------------------------------------
def layer_page(
    session: Session, model_id: str, layer_name: str, base: str = "", *, sort: str = "index", page: int = 1,
    per_page: int = DEFAULT_PER_PAGE,
) -> dict[str, Any]:
    model = _require_model(session, model_id)
    layer = _require_layer(session, model_id, layer_name)
    if sort not in queries.UNIT_SORTS:
        raise BadQuery("bad-sort", f"sort must be one of {', '.join(queries.UNIT_SORTS)}")
    total = queries.count_layer_units(session, layer["id"])
    rows = queries.units_page(session, layer["id"], sort, _offset(page, per_page), per_page)
    ids = [row["id"] for row in rows]
    featureviz = queries.thumbnails(session, ids)
    fallback = queries.example_thumbnails(session, [i for i in ids if i not in featureviz])
    words = queries.top_words(session, ids)
    units = []
    for row in rows:
        if row["id"] in featureviz:
            thumb, thumb_kind = featureviz[row["id"]], "featureviz"
        elif row["id"] in fallback:
            thumb, thumb_kind = fallback[row["id"]], "example"
        else:
            thumb, thumb_kind = None, None
        units.append(
            {
                "index": row["index"],
                "label": row["label"],
                "top_words": words.get(row["id"], []),
                "max": row["max"],
                "mean": row["mean"],
                "fraction_active": row["fraction_active"],
                "thumbnail_url": blob_url(thumb, base),
                "thumbnail_kind": thumb_kind,
                **unit_links(base, model_id, layer_name, row["index"]),
            }
        )
    entry = _layer_entry(layer, model_id, base, queries.coverage(session, [layer["id"]])[layer["id"]])
    missing = []
    if entry["computed"]["featureviz"] == 0:
        missing.append("No feature visualizations have been computed for this layer yet"
                       + ("; thumbnails show each unit's strongest dataset example." if entry["computed"]["examples"] else "."))
    if entry["computed"]["statistics"] == 0:
        missing.append("No activation statistics yet, so sorting by activation falls back to index order.")
    path = f"/models/{model_id}/{layer_name}"
    return {
        "model": {"id": model["id"], "arch": model["arch"], "url": f"{base}/models/{model_id}",
                  "api_url": f"{base}{API_PREFIX}/models/{model_id}"},
        "layer": entry,
        "sort": sort,
        "sorts": list(queries.UNIT_SORTS),
        "units": units,
        "pagination": pagination(base, path, total, page, per_page, sort=sort if sort != "index" else None),
        "export_url": f"{base}{API_PREFIX}{path}/export",
        "missing": missing,
        "api_url": url(base, API_PREFIX + path, sort=sort if sort != "index" else None,
                       page=page if page != 1 else None, per_page=per_page if per_page != DEFAULT_PER_PAGE else None),
    }


# -- a unit: everything we know about it ---------------------------------------------------------
def _cell(position: int | None, spatial: list[int] | None) -> dict[str, Any] | None:
    if position is None or not spatial:
        return None
    h, w = spatial
    if not 0 <= position < h * w:
        return None
    row, col = divmod(position, w)
    return {"row": row, "col": col, "x": col / w * 100, "y": row / h * 100, "w": 100 / w, "h": 100 / h}


def _featureviz(rows: list[dict[str, Any]], base: str) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {"main": [], "diversity": [], "facets": [], "other": []}
    for row in rows:
        entry = {
            "kind": row["kind"],
            "variant": row["variant"],
            "image_url": blob_url(row["blob_uri"], base),
            "final_activation": row["final_activation"],
            "parameters": row["parameters"] or {},
        }
        if row["kind"] in queries.MAIN_FEATUREVIZ_KINDS and row["variant"] == "":
            groups["main"].append(entry)
        elif row["kind"] == "diversity":
            groups["diversity"].append(entry)
        elif row["kind"] == "facet":
            groups["facets"].append(entry)
        else:
            groups["other"].append(entry)
    groups["diversity"].sort(key=lambda e: (int(e["variant"]) if e["variant"].isdigit() else 1 << 30, e["variant"]))
    return groups


def _examples(rows: list[dict[str, Any]], spatial: list[int] | None, base: str) -> list[dict[str, Any]]:
    by_dataset: dict[str, dict[str, Any]] = {}
    for row in rows:
        group = by_dataset.setdefault(row["dataset_id"], {"dataset": row["dataset_id"], "top": [], "bottom": []})
        group[row["sign"]].append(
            {
                "rank": row["rank"],
                "activation": row["activation"],
                "image_url": blob_url(row["blob_uri"], base),
                "crop_url": blob_url(row["crop_uri"], base),
                "width": row["width"],
                "height": row["height"],
                "position": row["position"],
                "cell": _cell(row["position"], spatial),
            }
        )
    return list(by_dataset.values())


def _buckets(rows: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    by_dataset: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        bucket = by_dataset[row["dataset_id"]].setdefault(
            row["bucket"], {"bucket": row["bucket"], "low": row["low"], "high": row["high"], "samples": []}
        )
        bucket["samples"].append({"slot": row["slot"], "activation": row["activation"], "image_url": blob_url(row["blob_uri"], base)})
    return [{"dataset": dataset, "buckets": [buckets[b] for b in sorted(buckets)]} for dataset, buckets in by_dataset.items()]


def _grouped(rows: list[dict[str, Any]], key: str, name: str, items: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        out[row[key]].append({f: row[f] for f in fields})
    return [{name: group, items: entries} for group, entries in out.items()]


def nearest_units(
    session: Session, cache: VectorCache, layer_id: int, unit: dict[str, Any], model_id: str, layer_name: str, base: str,
    k: int = NEAREST_UNITS,
) -> dict[str, Any]:
    """The units of the same layer most like this one, by the first basis that is stored:
    second-order directions, then word-activation profiles, then decomposition terms."""
    index = unit["index"]
    found: list[tuple[int, float]] = []
    basis = None
    lost = []  # stored inputs whose blob is missing from the blob store
    if unit["direction_uri"]:
        matrix = cache.directions(session, layer_id)
        row = matrix.row_of(index) if matrix else None
        if matrix is not None and unit["direction_uri"] in matrix.missing:
            lost.append("this unit's direction")
        elif matrix is not None and (row is None or matrix.uris[row] != unit["direction_uri"]):
            cache.invalidate(("directions", layer_id))  # stored after the cache was filled
            matrix = cache.directions(session, layer_id)
            row = matrix.row_of(index) if matrix else None
        if matrix is not None and row is not None:
            basis, found = "direction", matrix.nearest(matrix.vectors[row], k, exclude=index)
    if basis is None:
        for embedding in queries.word_embeddings(session, layer_id=layer_id)[:1]:
            try:
                profiles = cache.unit_word_profiles(embedding["vectors_uri"])
            except MissingBlob:
                lost.append("the layer's word embedding")
                continue
            row = profiles.row_of(index)
            if row is not None:
                basis, found = "word_embedding", profiles.nearest(profiles.vectors[row], k, exclude=index)
    if basis is None:
        matrix = cache.decompositions(session, layer_id)
        row = matrix.row_of(index) if matrix else None
        if matrix is not None and row is not None:
            basis, found = "decomposition", matrix.nearest(matrix.vectors[row], k, exclude=index)
    explanation = {
        "direction": "cosine similarity of the units' second-order directions in the joint image-text space",
        "word_embedding": "cosine similarity of the units' activations over the rastered word list",
        "decomposition": "cosine similarity of the units' sparse text decompositions",
        None: "nothing to compare with yet: no directions, word embeddings or decompositions are stored for this layer",
    }[basis]
    if lost:
        explanation += f" ({' and '.join(lost)} {'is' if len(lost) == 1 else 'are'} stored, but missing from the blob store)"
    neighbours = queries.unit_ids_by_index(session, layer_id, [i for i, _ in found])
    thumbs = queries.thumbnails(session, [neighbours[i]["id"] for i, _ in found if i in neighbours])
    units = []
    for i, similarity in found:
        row = neighbours.get(i)
        units.append(
            {
                "index": i,
                "similarity": round(similarity, 5),
                "label": row["label"] if row else None,
                "thumbnail_url": blob_url(thumbs.get(row["id"]) if row else None, base),
                **unit_links(base, model_id, layer_name, i),
            }
        )
    return {"basis": basis, "explanation": explanation, "units": units}


def _unit_results(
    session: Session, cache: VectorCache, unit: dict[str, Any], spatial: list[int] | None, model_id: str, layer_name: str,
    base: str,
) -> dict[str, Any]:
    """What the precompute jobs wrote about a unit: everything on its page that nobody edits."""
    uid = unit["id"]
    return {
        "featureviz": _featureviz(queries.featureviz_of(session, uid), base),
        "examples": _examples(queries.examples_of(session, uid), spatial, base),
        "buckets": _buckets(queries.buckets_of(session, uid), base),
        "words": _grouped(queries.words_of(session, uid), "word_list_id", "word_list", "words", ("rank", "word", "activation")),
        "decomposition": _grouped(
            queries.decomposition_of(session, uid), "pool_id", "pool", "terms", ("rank", "text", "coefficient")
        ),
        "nearest": nearest_units(session, cache, unit["layer_id"], unit, model_id, layer_name, base),
    }


def unit_page(
    session: Session, cache: VectorCache, model_id: str, layer_name: str, index: int, base: str = "",
    results: TTLCache | None = None,
) -> dict[str, Any]:
    """The unit page. With `results`, what the jobs wrote (visualizations, examples, words,
    decompositions, neighbours) is reused for the cache's lifetime; the unit row (label,
    statistics), its notes and its collections are read on every view."""
    unit = queries.unit_core(session, model_id, layer_name, index)
    if unit is None:
        _require_model(session, model_id)
        layer = _require_layer(session, model_id, layer_name)
        raise NotFound("unknown-unit", f"Layer {layer_name!r} of {model_id!r} has units 0 to {layer['units'] - 1}; there is no unit {index}.")
    spatial = [unit["spatial_h"], unit["spatial_w"]] if unit["spatial_h"] is not None else None

    def load() -> dict[str, Any]:
        return _unit_results(session, cache, unit, spatial, model_id, layer_name, base)

    key = ("unit", unit["layer_id"], unit["id"], unit["direction_uri"], base)
    parts = results.get(key, load) if results is not None else load()
    uid = unit["id"]
    notes = [
        {**row, "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"])} for row in queries.annotations_of(session, uid)
    ]
    collections = [
        {"id": c["id"], "title": c["title"], "url": f"{base}/collections/{c['id']}", "api_url": f"{base}{API_PREFIX}/collections/{c['id']}"}
        for c in queries.collections_of(session, uid)
    ]
    histogram = normalise_histogram(unit["histogram"])
    present = {
        "feature visualization": parts["featureviz"]["main"],
        "dataset examples": parts["examples"],
        "activation histogram": histogram,
        "conditional-probability samples": parts["buckets"],
        "rastered words": parts["words"],
        "text decomposition": parts["decomposition"],
        "second-order direction": blob_url(unit["direction_uri"], base),  # None when its file is missing too
    }
    units = unit["layer_units"]
    prev_unit = unit_links(base, model_id, layer_name, index - 1) | {"index": index - 1} if index > 0 else None
    next_unit = unit_links(base, model_id, layer_name, index + 1) | {"index": index + 1} if index + 1 < units else None
    return {
        "id": f"{model_id}/{layer_name}/{index}",
        "model": {"id": model_id, "url": f"{base}/models/{model_id}", "api_url": f"{base}{API_PREFIX}/models/{model_id}"},
        "layer": {
            "name": layer_name,
            "kind": unit["layer_kind"],
            "units": units,
            "spatial": spatial,
            "url": f"{base}/models/{model_id}/{layer_name}",
            "api_url": f"{base}{API_PREFIX}/models/{model_id}/{layer_name}",
        },
        "index": index,
        "label": unit["label"],
        "stats": _stats(unit),
        "histogram": histogram,
        **parts,
        "has_direction": unit["direction_uri"] is not None,
        "annotations": notes,
        "collections": collections,
        "prev": prev_unit,
        "next": next_unit,
        "missing": [name for name, value in present.items() if not value],
        **unit_links(base, model_id, layer_name, index),
    }


# -- bulk export ---------------------------------------------------------------------------------
def export_layer(session: Session, model_id: str, layer_name: str, base: str = "", chunk: int = 256) -> Iterator[dict[str, Any]]:
    """Every unit of a layer with its statistics, label, top words, main visualization, top
    dataset examples and decomposition: one dict per unit, read a chunk of units at a time."""
    _require_model(session, model_id)
    layer = _require_layer(session, model_id, layer_name)
    spatial = [layer["spatial_h"], layer["spatial_w"]] if layer["spatial_h"] is not None else None
    total = queries.count_layer_units(session, layer["id"])
    for offset in range(0, total, chunk):
        rows = queries.units_page(session, layer["id"], "index", offset, chunk)
        ids = [row["id"] for row in rows]
        extra = queries.export_details(session, ids)
        thumbs = queries.thumbnails(session, ids)
        for row in rows:
            detail = extra.get(row["id"], {})
            yield {
                "model": model_id,
                "layer": layer_name,
                "index": row["index"],
                "label": row["label"],
                "stats": _stats(row),
                "featureviz_url": blob_url(thumbs.get(row["id"]), base),
                "words": [{"word": w, "activation": a} for w, a in detail.get("words", [])],
                "examples": [
                    {"sign": s, "rank": r, "activation": a, "image_url": blob_url(u, base), "cell": _cell(p, spatial)}
                    for s, r, a, u, p in detail.get("examples", [])
                ],
                "decomposition": [{"text": t, "coefficient": c} for t, c in detail.get("decomposition", [])],
                **unit_links(base, model_id, layer_name, row["index"]),
            }


# -- search --------------------------------------------------------------------------------------
def search_page(
    session: Session, base: str = "", *, q: str = "", model_id: str | None = None, layer: str | None = None,
    page: int = 1, per_page: int = DEFAULT_PER_PAGE,
) -> dict[str, Any]:
    q = q.strip()
    if len(q) > 200:
        raise BadQuery("long-query", "search text is limited to 200 characters")
    results: list[dict[str, Any]] = []
    total = 0
    if q:
        found = queries.search_units(session, q, model_id=model_id or None, layer=layer or None)
        total = len(found)
        chunk = found[_offset(page, per_page): _offset(page, per_page) + per_page]
        thumbs = queries.thumbnails(session, [row["id"] for row in chunk])
        for row in chunk:
            results.append(
                {
                    "model": row["model_id"],
                    "layer": row["layer"],
                    "index": row["index"],
                    "label": row["label"],
                    "matched": row["matched"],
                    "match_text": row["match_text"],
                    "thumbnail_url": blob_url(thumbs.get(row["id"]), base),
                    **unit_links(base, row["model_id"], row["layer"], row["index"]),
                }
            )
    return {
        "q": q,
        "model": model_id or None,
        "layer": layer or None,
        "results": results,
        "pagination": pagination(base, "/search", total, page, per_page, q=q or None, model=model_id or None, layer=layer or None),
        "models": _model_choices(session),
        "api_url": url(base, f"{API_PREFIX}/search", q=q or None, model=model_id or None, layer=layer or None,
                       page=page if page != 1 else None),
    }


def _model_choices(session: Session) -> list[dict[str, Any]]:
    models = queries.models_page(session, 0, 1000)
    layers = queries.layers_of(session, [m["id"] for m in models])
    return [{"id": m["id"], "layers": [layer["name"] for layer in layers.get(m["id"], [])]} for m in models]


def prompt_search(
    session: Session, cache: VectorCache, text_vector: Any, base: str, *, prompt: str, model_id: str, layer: str | None, k: int
) -> dict[str, Any]:
    """Units whose stored direction is nearest to an encoded text prompt (`text_vector`)."""
    layers = queries.layers_of(session, [model_id]).get(model_id, [])
    if layer:
        layers = [l for l in layers if l["name"] == layer]
    ranked: list[tuple[float, str, int]] = []
    searched = []
    lost: list[str] = []  # directions stored but missing from the blob store, per layer
    for entry in layers:
        matrix = cache.directions(session, entry["id"])
        if matrix is None:
            continue
        if matrix.missing:
            lost.append(f"{len(matrix.missing)} of layer {entry['name']!r}")
        if len(matrix.indices) == 0 or matrix.vectors.shape[1] != len(text_vector):
            continue  # directions of another space (e.g. a different head): not comparable
        searched.append(entry["name"])
        ranked.extend((sim, entry["name"], i) for i, sim in matrix.nearest(text_vector, k))
    ranked.sort(key=lambda r: -r[0])
    ranked = ranked[:k]
    by_layer: dict[str, list[int]] = defaultdict(list)
    for _, name, i in ranked:
        by_layer[name].append(i)
    info: dict[tuple[str, int], dict[str, Any]] = {}
    for entry in layers:
        if entry["name"] in by_layer:
            for i, row in queries.unit_ids_by_index(session, entry["id"], by_layer[entry["name"]]).items():
                info[(entry["name"], i)] = row
    thumbs = queries.thumbnails(session, [row["id"] for row in info.values()])
    results = []
    for similarity, name, i in ranked:
        row = info.get((name, i))
        results.append(
            {
                "model": model_id,
                "layer": name,
                "index": i,
                "similarity": round(similarity, 5),
                "label": row["label"] if row else None,
                "thumbnail_url": blob_url(thumbs.get(row["id"]) if row else None, base),
                **unit_links(base, model_id, name, i),
            }
        )
    missing = []
    if not searched:
        where = f"layer {layer!r} of {model_id!r}" if layer else f"any layer of {model_id!r}"
        missing.append(f"No unit directions are stored for {where} yet, so there is nothing to compare the prompt with. "
                       "They are written by the decomposition job.")
    if lost:
        missing.append(f"Some unit directions are stored but their files are missing from the blob store "
                       f"({', '.join(lost)}); those units are left out of the ranking.")
    return {"prompt": prompt, "model": model_id, "layer": layer, "layers_searched": searched, "results": results, "missing": missing}


# -- words ---------------------------------------------------------------------------------------
def parse_word_expression(q: str) -> list[tuple[int, str]]:
    """'king - man + woman' -> [(1, 'king'), (-1, 'man'), (1, 'woman')]."""
    terms: list[tuple[int, str]] = []
    sign = 1
    for token in q.replace("+", " + ").split():
        if token == "+":
            sign = 1
        elif token == "-":
            sign = -1
        else:
            if token.startswith("-") and len(token) > 1:
                sign, token = -1, token[1:]
            terms.append((sign, token.lower()))
            sign = 1
    return terms


def words_page(
    session: Session, cache: VectorCache, base: str = "", *, q: str = "", model_id: str | None = None,
    layer: str | None = None, word_list: str | None = None, k: int = 20,
) -> dict[str, Any]:
    import numpy as np

    embeddings = queries.word_embeddings(session)
    available = [
        {"model": e["model_id"], "layer": e["layer"], "word_list": e["word_list_id"],
         "url": url(base, "/words", model=e["model_id"], layer=e["layer"], word_list=e["word_list_id"])}
        for e in embeddings
    ]
    q = q.strip()
    if len(q) > 200:
        raise BadQuery("long-query", "expressions are limited to 200 characters")
    chosen = None
    for e in embeddings:
        if (not model_id or e["model_id"] == model_id) and (not layer or e["layer"] == layer) and (
            not word_list or e["word_list_id"] == word_list
        ):
            chosen = e
            break
    page: dict[str, Any] = {
        "q": q,
        "available": available,
        "model": chosen["model_id"] if chosen else model_id,
        "layer": chosen["layer"] if chosen else layer,
        "word_list": chosen["word_list_id"] if chosen else word_list,
        "terms": [],
        "results": [],
        "examples": [],
        "missing": [],
        "api_url": url(base, f"{API_PREFIX}/words", q=q or None, model=model_id, layer=layer, word_list=word_list,
                       k=k if k != 20 else None),
    }
    if chosen is None:
        if embeddings:
            page["missing"].append("No word embedding matches that model, layer and word list; pick one of those available.")
        else:
            page["missing"].append("No image-based word embeddings have been computed yet (the words job writes them).")
        return page
    words = queries.word_list_words(session, chosen["word_list_id"]) or []
    page["examples"] = words[:12]
    if not q:
        return page
    terms = parse_word_expression(q)
    lookup = {w.lower(): i for i, w in enumerate(words)}
    unknown = sorted({w for _, w in terms if w not in lookup})
    if not terms:
        raise BadQuery("empty-expression", "the expression has no words")
    if unknown:
        raise BadQuery("unknown-words", f"not in the word list {chosen['word_list_id']!r}: {', '.join(unknown)}",
                       unknown_words=unknown)
    try:
        matrix = cache.word_embedding(chosen["vectors_uri"])
        normalised = cache.word_vectors(chosen["vectors_uri"])
    except MissingBlob as missing_blob:
        page["missing"].append(f"The word embedding of {chosen['model_id']} {chosen['layer']} over {chosen['word_list_id']!r} "
                               f"is stored, but its file ({missing_blob.name}) is missing from the blob store; "
                               "running the words job again writes it.")
        return page
    if matrix.shape[0] != len(words):
        raise BadQuery("inconsistent-embedding", "the stored embedding does not match its word list", status=409)
    query = np.zeros(matrix.shape[1], dtype=np.float32)
    for sign, word in terms:
        query += sign * matrix[lookup[word]]
    norm = float(np.linalg.norm(query))
    page["terms"] = [{"sign": "+" if s > 0 else "-", "word": w} for s, w in terms]
    if norm == 0:
        page["missing"].append("The expression sums to the zero vector; nothing is nearest to it.")
        return page
    sims = normalised @ (query / norm)
    exclude = {lookup[w] for _, w in terms}
    order = np.argsort(-sims, kind="stable")
    results = []
    for i in order:
        if int(i) in exclude:
            continue
        results.append({"word": words[int(i)], "similarity": round(float(sims[int(i)]), 5)})
        if len(results) == k:
            break
    page["results"] = results
    return page


# -- collections ---------------------------------------------------------------------------------
def collections_index(session: Session, base: str = "", page: int = 1, per_page: int = DEFAULT_PER_PAGE) -> dict[str, Any]:
    total = queries.count_collections(session)
    rows = queries.collections_page(session, _offset(page, per_page), per_page)
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
                "url": f"{base}/collections/{row['id']}",
                "api_url": f"{base}{API_PREFIX}/collections/{row['id']}",
            }
            for row in rows
        ],
        "pagination": pagination(base, "/collections", total, page, per_page),
        "api_url": url(base, f"{API_PREFIX}/collections", page=page if page != 1 else None),
    }


def collection_detail(
    session: Session, collection_id: str, base: str = "", page: int = 1, per_page: int = DEFAULT_PER_PAGE
) -> dict[str, Any]:
    row = queries.collection_row(session, collection_id)
    if row is None:
        raise NotFound("unknown-collection", f"No collection named {collection_id!r}.")
    total = queries.count_collection_units(session, collection_id)
    members = queries.collection_units(session, collection_id, _offset(page, per_page), per_page)
    thumbs = queries.thumbnails(session, [m["unit_id"] for m in members])
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
                "thumbnail_url": blob_url(thumbs.get(m["unit_id"]), base),
                **unit_links(base, m["model_id"], m["layer"], m["index"]),
            }
            for m in members
        ],
        "pagination": pagination(base, f"/collections/{collection_id}", total, page, per_page),
        "url": f"{base}/collections/{collection_id}",
        "api_url": url(base, f"{API_PREFIX}/collections/{collection_id}", page=page if page != 1 else None),
    }


# -- jobs ----------------------------------------------------------------------------------------
def jobs_page(
    session: Session, base: str = "", *, state: str | None = None, model_id: str | None = None, kind: str | None = None,
    page: int = 1, per_page: int = 100,
) -> dict[str, Any]:
    total = queries.count_jobs(session, state=state, model_id=model_id, kind=kind)
    rows = queries.jobs_page(session, _offset(page, per_page), per_page, state=state, model_id=model_id, kind=kind)
    jobs = [
        {
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
            "model_url": f"{base}/models/{row['model_id']}",
            "layer_url": f"{base}/models/{row['model_id']}/{row['layer']}" if row["layer"] else None,
        }
        for row in rows
    ]
    counts = queries.jobs_by_state(session, model_id=model_id, kind=kind)
    return {
        "jobs": jobs,
        "counts": {s: counts.get(s, 0) for s in ("running", "pending", "failed", "done")},
        "filters": {"state": state, "model": model_id, "kind": kind},
        "kinds": queries.job_kinds(session),
        "pagination": pagination(base, "/jobs", total, page, per_page, state=state, model=model_id, kind=kind),
        "api_url": url(base, f"{API_PREFIX}/jobs", state=state, model=model_id, kind=kind, page=page if page != 1 else None),
    }


# -- probe: the form -----------------------------------------------------------------------------
def probe_form(
    session: Session, base: str = "", *, model_id: str | None = None, layer: str | None = None, dataset: str | None = None,
    page: int = 1, per_page: int = 24, limits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    choices = []
    models = queries.models_page(session, 0, 1000)
    layers = queries.layers_of(session, [m["id"] for m in models])
    for m in models:
        names = [l["name"] for l in layers.get(m["id"], [])]
        default = default_layer(layers.get(m["id"], []))
        choices.append({"id": m["id"], "arch": m["arch"], "layers": names, "default_layer": default})
    chosen_model = model_id or (choices[0]["id"] if choices else None)
    chosen_layer = layer or next((c["default_layer"] for c in choices if c["id"] == chosen_model), None)
    sets = queries.datasets(session)
    chosen_dataset = dataset or (sets[0]["id"] if sets else None)
    images: list[dict[str, Any]] = []
    total = 0
    if chosen_dataset:
        total = next((s["image_count"] for s in sets if s["id"] == chosen_dataset), 0)
        images = [
            {"position": row["position"], "image_url": blob_url(row["blob_uri"], base), "width": row["width"], "height": row["height"]}
            for row in queries.dataset_images(session, chosen_dataset, _offset(page, per_page), per_page)
        ]
    return {
        "models": choices,
        "model": chosen_model,
        "layer": chosen_layer,
        "datasets": [{"id": s["id"], "kind": s["kind"], "image_count": s["image_count"]} for s in sets],
        "dataset": chosen_dataset,
        "dataset_images": images,
        "pagination": pagination(base, "/probe", total, page, per_page, model=chosen_model, layer=chosen_layer, dataset=chosen_dataset),
        "limits": limits or {},
        "api_url": url(base, f"{API_PREFIX}/probe", model=model_id, layer=layer, dataset=dataset, page=page if page != 1 else None),
    }


def default_layer(layers: list[dict[str, Any]]) -> str | None:
    """The layer Microscope catalogues: layer4 for ResNets, the last MLP for ViTs."""
    names = [l["name"] for l in layers]
    if "layer4" in names:
        return "layer4"
    mlps = [n for n in names if n.endswith(".mlp")]
    if mlps:
        return mlps[-1]
    return names[-1] if names else None


def probe_result(
    session: Session, base: str, *, model_id: str, layer_name: str, live: dict[str, Any], source: dict[str, Any]
) -> dict[str, Any]:
    """Attach what the store knows (labels, thumbnails, maxima) to the model service's answer."""
    import base64

    layer = _require_layer(session, model_id, layer_name)
    spatial = live.get("spatial")
    units = queries.unit_ids_by_index(session, layer["id"], [u["unit"] for u in live["units"]])
    maxima = {row["id"]: row for row in queries.units_by_ids(session, [u["id"] for u in units.values()]).values()}
    thumbs = queries.thumbnails(session, [u["id"] for u in units.values()])
    results = []
    for entry in live["units"]:
        row = units.get(entry["unit"])
        unit_max = maxima[row["id"]]["max"] if row else None
        results.append(
            {
                "index": entry["unit"],
                "activation": round(entry["activation"], 5),
                "relative": round(entry["activation"] / unit_max, 4) if unit_max else None,
                "dataset_max": unit_max,
                "position": entry.get("position"),
                "cell": _cell(entry.get("position"), spatial),
                "map": entry.get("map"),
                "map_max": max((max(r) for r in entry["map"]), default=0.0) if entry.get("map") else None,
                "label": row["label"] if row else None,
                "thumbnail_url": blob_url(thumbs.get(row["id"]) if row else None, base),
                **unit_links(base, model_id, layer_name, entry["unit"]),
            }
        )
    return {
        "model": model_id,
        "layer": layer_name,
        "spatial": spatial,
        "unit_count": live["unit_count"],
        "input": {
            **source,
            "model_view": "data:image/png;base64," + base64.b64encode(live["input_png"]).decode("ascii"),
        },
        "units": results,
        "model_url": f"{base}/models/{model_id}",
        "layer_url": f"{base}/models/{model_id}/{layer_name}",
    }
