"""The typographic probe: write a word on a picture, see the top classes before and after, the
units the word raised most (with what the store knows of them), and the classes again with those
units silenced."""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy.orm import Session

from app.pages.common import NO_THUMBNAIL, pagination, require_layer, unit_thumbnails
from app.pages.probe import probe_form
from app.urls import Urls
from precompute.zeroshot import BUILTIN_SETS
from store import queries

DEFAULT_TEXT = "square"
DECOMPOSITION_TERMS = 3


def default_label_set(arch: str | None) -> str:
    """The world's shapes for our toy models, ImageNet's classes for a real CLIP."""
    return "world-shapes" if (arch or "").startswith("toy") else "imagenet"


def typographic_form(
    session: Session, urls: Urls, *, model_id: str | None = None, layer: str | None = None, dataset: str | None = None,
    page: int = 1, per_page: int = 24, limits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What /probe/typographic offers: the probe's models, layers and dataset images, the label sets."""
    form = probe_form(session, urls, model_id=model_id, layer=layer, dataset=dataset, page=page, per_page=per_page,
                      limits=limits)
    arch = next((m["arch"] for m in form["models"] if m["id"] == form["model"]), None)
    total = next((d["image_count"] for d in form["datasets"] if d["id"] == form["dataset"]), 0)
    form.update(
        label_sets=list(BUILTIN_SETS),
        label_set=default_label_set(arch),
        text=DEFAULT_TEXT,
        pagination=pagination(urls, Urls.probe_typographic, total=total, page=page, per_page=per_page, model=form["model"],
                              layer=form["layer"], dataset=form["dataset"]),
        api_url=urls.api.probe_typographic(model=model_id, layer=layer, dataset=dataset, page=page if page != 1 else None),
    )
    return form


def _png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def typographic_result(
    session: Session, urls: Urls, *, model_id: str, layer_name: str, live: dict[str, Any], source: dict[str, Any],
    attack: dict[str, Any], labels: dict[str, Any], rerun: dict[str, Any],
) -> dict[str, Any]:
    """Attach the store's knowledge of the listed units (thumbnail, label, link, decomposition)
    to the model service's answer."""
    layer = require_layer(session, model_id, layer_name)
    indices = [u["unit"] for u in live["units"]]
    rows = queries.unit_ids_by_index(session, layer["id"], indices)
    thumbs = unit_thumbnails(session, urls, [row["id"] for row in rows.values()])
    units = []
    for entry in live["units"]:
        row = rows.get(entry["unit"])
        terms = queries.decomposition_of(session, row["id"])[:DECOMPOSITION_TERMS] if row else []
        units.append({
            "index": entry["unit"],
            "before": entry["before"],
            "after": entry["after"],
            "change": entry["change"],
            "label": row["label"] if row else None,
            "decomposition": [{"text": t["text"], "coefficient": round(float(t["coefficient"]), 4)} for t in terms],
            **(thumbs.get(row["id"], NO_THUMBNAIL) if row else NO_THUMBNAIL),
            **urls.unit_links(model_id, layer_name, entry["unit"]),
        })
    before, after = live["before"], live["after"]
    silenced = live.get("silenced")
    if silenced is not None:
        silenced = {
            "units": silenced["units"],
            "before": silenced["before"],
            "after": silenced["after"],
            # The attack still works when, with the units silenced, the attacked picture's top
            # class is still the one the attack made it.
            "attack_still_works": silenced["after"][0]["label"] == after[0]["label"] != before[0]["label"],
            "restored": silenced["after"][0]["label"] == before[0]["label"],
        }
    return {
        "model": model_id,
        "layer": layer_name,
        "labels": labels,
        "attack": attack,
        "input": {**source, "model_view": _png(live["input_png"]), "attacked_view": _png(live["attacked_png"])},
        "before": before,
        "after": after,
        "top_changed": before[0]["label"] != after[0]["label"],
        "units": units,
        "silenced": silenced,
        "rerun": rerun,
        "model_url": urls.html.model(model_id),
        "layer_url": urls.html.layer(model_id, layer_name),
    }
