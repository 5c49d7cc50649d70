"""The probe: the form (models, layers, dataset images to pick from) and what the store knows
about the units the model service found firing on an image."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from app.pages.common import NO_THUMBNAIL, cell, offset, pagination, png_data_url, require_layer, unit_thumbnails
from app.urls import Urls
from precompute.errors import Problem
from precompute.zeroshot import BUILTIN_SETS
from store import queries


def default_layer(layers: list[dict[str, Any]]) -> str | None:
    """The layer Microscope catalogues: layer4 for ResNets, the last MLP for ViTs."""
    names = [l["name"] for l in layers]
    if "layer4" in names:
        return "layer4"
    mlps = [n for n in names if n.endswith(".mlp")]
    if mlps:
        return mlps[-1]
    return names[-1] if names else None


def probe_form(
    session: Session, urls: Urls, *, model_id: str | None = None, layer: str | None = None, dataset: str | None = None,
    page: int = 1, per_page: int = 24, limits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    choices = []
    models = queries.models_page(session, 0, 1000)
    layers = queries.layers_of(session, [m["id"] for m in models])
    for m in models:
        model_layers = layers.get(m["id"], [])
        names = [l["name"] for l in model_layers]
        choices.append({"id": m["id"], "arch": m["arch"], "layers": names, "default_layer": default_layer(model_layers)})
    if model_id and model_id not in {c["id"] for c in choices}:
        raise Problem(404, "unknown-model", f"No model with id {model_id!r} is registered.")
    chosen_model = model_id or (choices[0]["id"] if choices else None)
    chosen_layer = layer or next((c["default_layer"] for c in choices if c["id"] == chosen_model), None)
    sets = queries.datasets(session)
    chosen_dataset = dataset or (sets[0]["id"] if sets else None)
    images: list[dict[str, Any]] = []
    total = 0
    if chosen_dataset:
        total = next((s["image_count"] for s in sets if s["id"] == chosen_dataset), 0)
        images = [
            {"position": row["position"], "image_url": urls.blob(row["blob_uri"]), "width": row["width"], "height": row["height"]}
            for row in queries.dataset_images(session, chosen_dataset, offset(page, per_page), per_page)
        ]
    return {
        "models": choices,
        "model": chosen_model,
        "layer": chosen_layer,
        "datasets": [{"id": s["id"], "kind": s["kind"], "image_count": s["image_count"]} for s in sets],
        "dataset": chosen_dataset,
        "dataset_images": images,
        "pagination": pagination(urls, Urls.probe, total=total, page=page, per_page=per_page, model=chosen_model,
                                 layer=chosen_layer, dataset=chosen_dataset),
        "limits": limits or {},
        "api_url": urls.api.probe(model=model_id, layer=layer, dataset=dataset, page=page if page != 1 else None),
    }


def toy_arch(arch: str | None) -> bool:
    """Whether a registered architecture is one of our toy models (their own tokenizer and templates)."""
    return (arch or "").startswith("toy")


def default_label_set(arch: str | None) -> str:
    """The world's shapes for our toy models, ImageNet's classes for a real CLIP."""
    return "world-shapes" if toy_arch(arch) else "imagenet"


def labelled_probe_form(
    session: Session, urls: Urls, route: Callable[..., str], *, model_id: str | None, layer: str | None,
    dataset: str | None, page: int, per_page: int, limits: dict[str, Any] | None,
) -> tuple[dict[str, Any], str | None]:
    """(form, the chosen model's architecture) for a live page that classifies a picture: the
    probe's models, layers and dataset images, the label sets with the model's default, and
    paging and the JSON twin at the page's own `route` (a Urls method, `Urls.discover`)."""
    form = probe_form(session, urls, model_id=model_id, layer=layer, dataset=dataset, page=page, per_page=per_page,
                      limits=limits)
    arch = next((m["arch"] for m in form["models"] if m["id"] == form["model"]), None)
    total = next((d["image_count"] for d in form["datasets"] if d["id"] == form["dataset"]), 0)
    form.update(
        label_sets=list(BUILTIN_SETS),
        label_set=default_label_set(arch),
        pagination=pagination(urls, route, total=total, page=page, per_page=per_page, model=form["model"], layer=layer,
                              dataset=form["dataset"]),
        api_url=route(urls.api, model=model_id, layer=layer, dataset=dataset, page=page if page != 1 else None),
    )
    return form, arch


def probe_result(
    session: Session, urls: Urls, *, model_id: str, layer_name: str, live: dict[str, Any], source: dict[str, Any]
) -> dict[str, Any]:
    """Attach what the store knows (labels, thumbnails, maxima) to the model service's answer."""
    layer = require_layer(session, model_id, layer_name)
    spatial = live.get("spatial")
    units = queries.unit_ids_by_index(session, layer["id"], [u["unit"] for u in live["units"]])
    maxima = {row["id"]: row for row in queries.units_by_ids(session, [u["id"] for u in units.values()]).values()}
    thumbs = unit_thumbnails(session, urls, [u["id"] for u in units.values()])
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
                "cell": cell(entry.get("position"), spatial),
                "map": entry.get("map"),
                "map_max": max((max(r) for r in entry["map"]), default=0.0) if entry.get("map") else None,
                "label": row["label"] if row else None,
                **(thumbs.get(row["id"], NO_THUMBNAIL) if row else NO_THUMBNAIL),
                **urls.unit_links(model_id, layer_name, entry["unit"]),
            }
        )
    return {
        "model": model_id,
        "layer": layer_name,
        "spatial": spatial,
        "unit_count": live["unit_count"],
        "input": {
            **source,
            "model_view": png_data_url(live["input_png"]),
        },
        "units": results,
        "model_url": urls.html.model(model_id),
        "layer_url": urls.html.layer(model_id, layer_name),
    }
