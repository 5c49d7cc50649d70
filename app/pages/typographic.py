"""The typographic probe: write a word on a picture, see the top classes before and after, the
units the word raised most (with what the store knows of them), and the classes again with those
units silenced."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.pages.common import NO_THUMBNAIL, png_data_url, require_layer, unit_thumbnails
from app.pages.probe import default_label_set, labelled_probe_form
from app.urls import Urls
from store import queries

__all__ = ["default_label_set", "typographic_form", "typographic_result"]

DEFAULT_TEXT = "square"
DECOMPOSITION_TERMS = 3


def typographic_form(
    session: Session, urls: Urls, *, model_id: str | None = None, layer: str | None = None, dataset: str | None = None,
    page: int = 1, per_page: int = 24, limits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What /probe/typographic offers: the probe's models, layers and dataset images, the label sets."""
    form, _ = labelled_probe_form(session, urls, Urls.probe_typographic, model_id=model_id, layer=layer, dataset=dataset,
                                  page=page, per_page=per_page, limits=limits)
    form["text"] = DEFAULT_TEXT
    return form


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
        "input": {**source, "model_view": png_data_url(live["input_png"]), "attacked_view": png_data_url(live["attacked_png"])},
        "before": before,
        "after": after,
        "top_changed": before[0]["label"] != after[0]["label"],
        "units": units,
        "silenced": silenced,
        "rerun": rerun,
        "model_url": urls.html.model(model_id),
        "layer_url": urls.html.layer(model_id, layer_name),
    }
