"""The home page (every registered model with its layers and what is computed) and a model's page."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy.orm import Session

from app.pages.common import iso, offset, pagination, require_model, spatial_of
from app.urls import Urls
from store import queries


def layer_entry(layer: dict[str, Any], model_id: str, urls: Urls, coverage: dict[str, int] | None) -> dict[str, Any]:
    entry = {
        "name": layer["name"],
        "kind": layer["kind"],
        "units": layer["units"],
        "spatial": spatial_of(layer),
        "has_class_token": bool(layer["has_class_token"]),
        "position": layer["position"],
        **urls.layer_links(model_id, layer["name"]),
    }
    if coverage is not None:
        entry["computed"] = coverage
    return entry


def _model_summary(model: dict[str, Any], layers: list[dict[str, Any]], urls: Urls) -> dict[str, Any]:
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
        **urls.model_links(model["id"]),
    }


def _computed_totals(layers: list[dict[str, Any]]) -> dict[str, int]:
    totals = dict.fromkeys(queries.COVERAGE_KINDS, 0)
    for layer in layers:
        for kind, count in layer.get("computed", {}).items():
            totals[kind] += count
    return totals


def models_index(session: Session, urls: Urls, page: int = 1, per_page: int = 50) -> dict[str, Any]:
    total = queries.count_models(session)
    rows = queries.models_page(session, offset(page, per_page), per_page)
    layers = queries.layers_of(session, [m["id"] for m in rows])
    coverage = queries.coverage(session, [layer["id"] for ls in layers.values() for layer in ls])
    models = []
    for model in rows:
        model_layers = layers.get(model["id"], [])
        entries = [layer_entry(layer, model["id"], urls, coverage[layer["id"]]) for layer in model_layers]
        summary = _model_summary(model, model_layers, urls)
        summary["layers"] = entries
        summary["computed"] = _computed_totals(entries)
        models.append(summary)
    return {
        "models": models,
        "count": len(models),
        "pagination": pagination(urls, Urls.models, total=total, page=page, per_page=per_page),
        "api_url": urls.api.models(),
    }


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


def model_detail(session: Session, model_id: str, urls: Urls) -> dict[str, Any]:
    model = require_model(session, model_id)
    layers = queries.layers_of(session, [model_id]).get(model_id, [])
    coverage = queries.coverage(session, [layer["id"] for layer in layers])
    progress = _progress(queries.job_progress(session, [model_id]))
    entries = []
    for layer in layers:
        entry = layer_entry(layer, model_id, urls, coverage[layer["id"]])
        entry["jobs"] = progress.get(layer["name"], [])
        entries.append(entry)
    detail = _model_summary(model, layers, urls)
    detail.update(
        checkpoint_path=model["checkpoint_path"],
        preprocess=model["preprocess"],
        layers=entries,
        computed=_computed_totals(entries),
        model_jobs=progress.get(None, []),
        jobs_url=urls.html.jobs(model=model_id),
    )
    return detail
