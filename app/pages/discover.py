"""/discover: which concepts the model sees in a picture (the texts its standing-out neurons add up
to), where it sees a class (zero-shot segmentation from the neurons aligned with the class's
text), and what changes when chosen neurons are silenced. One dict per page, HTML or JSON."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.pages.common import NO_THUMBNAIL, png_data_url, unit_thumbnails
from app.pages.probe import labelled_probe_form
from app.urls import Urls
from store import queries

SHOWN_NEURONS = 24  # of the segmentation's neurons, the page lists the most aligned
MAX_ABLATION_INFO = 64  # of the silenced units, the answer describes the first (in the model's layer order)


def default_class_name(arch: str | None) -> str:
    return "circle" if (arch or "").startswith("toy") else "dog"


def tower_family(layers: list[dict[str, Any]]) -> tuple[str, int]:
    """("vit", its depth) for a transformer tower's layers, ("resnet", 0) otherwise."""
    blocks = {int(l["name"].split(".")[2]) for l in layers if l["name"].startswith("transformer.resblocks.")}
    return ("vit", max(blocks) + 1) if blocks else ("resnet", 0)


def discover_form(
    session: Session, urls: Urls, *, model_id: str | None = None, layer: str | None = None, dataset: str | None = None,
    page: int = 1, per_page: int = 24, limits: dict[str, Any] | None = None, layers: list[str] | None = None,
) -> dict[str, Any]:
    """What /discover offers: models, their layers with directions, those with decompositions too
    (the concept layers to choose from, the late ones by default), dataset images, label sets."""
    from precompute.discovery import default_concept_layers
    from store.directions import latest_direction_sets

    form, arch = labelled_probe_form(session, urls, Urls.discover, model_id=model_id, layer=layer, dataset=dataset,
                                     page=page, per_page=per_page, limits=limits)
    model_layers = queries.layers_of(session, [form["model"]]).get(form["model"], []) if form["model"] else []
    rows = latest_direction_sets(session, [l["id"] for l in model_layers])
    stored = [l for l in model_layers if l["id"] in rows]
    decomposed = queries.decomposition_fingerprints(session, [l["id"] for l in stored])
    concept_layers = [l["name"] for l in stored if l["id"] in decomposed]
    chosen = [name for name in concept_layers if name in set(layers or ()) | {layer}] or \
        (default_concept_layers(*tower_family(model_layers), concept_layers) if concept_layers else [])
    form.update(
        layer=layer if layer else (chosen[-1] if chosen else (stored[-1]["name"] if stored else form["layer"])),
        layers=chosen,
        direction_layers=[l["name"] for l in stored],
        concept_layers=concept_layers,
        class_name=default_class_name(arch),
    )
    return form


class _Units:
    """Thumbnails, labels and links of the units a result names: every wanted unit is looked up
    in one pass (one statement for ids and labels, one for thumbnails) on the first entry asked for."""

    def __init__(self, session: Session, urls: Urls, model_id: str) -> None:
        self.session, self.urls, self.model_id = session, urls, model_id
        self._wanted: dict[str, set[int]] = {}
        self._known: dict[tuple[str, int], dict[str, Any]] | None = None

    def want(self, layer: str, indices) -> None:
        self._wanted.setdefault(layer, set()).update(int(i) for i in indices)
        self._known = None

    def _resolve(self) -> dict[tuple[str, int], dict[str, Any]]:
        if self._known is None:
            rows = queries.units_by_layer_index(self.session, self.model_id, self._wanted)
            thumbs = unit_thumbnails(self.session, self.urls, [r["id"] for r in rows.values()])
            self._known = {key: {"label": r["label"], **thumbs.get(r["id"], NO_THUMBNAIL)} for key, r in rows.items()}
        return self._known

    def entry(self, layer: str, index: int) -> dict[str, Any]:
        info = self._resolve().get((layer, index), {"label": None, **NO_THUMBNAIL})
        return {"layer": layer, "unit": index, "index": index, "ref": f"{layer}:{index}", **info,
                **self.urls.unit_links(self.model_id, layer, index)}


def _state(part: dict[str, Any] | None, units: _Units) -> dict[str, Any] | None:
    if part is None:
        return None
    out: dict[str, Any] = {"prediction": part["prediction"]}
    concepts = part.get("concepts")
    if concepts is not None:
        out["concepts"] = {
            "layer": concepts["layer"],
            "layers": concepts["layers"],
            "active_count": len(concepts["active"]),
            "active": [{**units.entry(a["layer"], a["unit"]), "norm": round(a["norm"], 5), "threshold": round(a["threshold"], 5)}
                       for a in concepts["active"]],
            "texts": [{"text": t["text"], "score": round(t["score"], 5),
                       "neurons": [{**units.entry(n["layer"], n["unit"]), "coefficient": round(n["coefficient"], 5),
                                    "norm": round(n["norm"], 5), "contribution": round(n["contribution"], 5)}
                                   for n in t["neurons"]]} for t in concepts["texts"]],
        }
    seg = part.get("segmentation")
    if seg is not None:
        out["segmentation"] = {"heat_map": png_data_url(seg["heat_png"]), "mask": png_data_url(seg["mask_png"]), "grid": seg["grid"],
                               "size": seg["size"], "mask_fraction": round(seg["mask_fraction"], 5)}
    return out


def discover_result(session: Session, urls: Urls, *, model_id: str, live: dict[str, Any], source: dict[str, Any],
                    summary: dict[str, Any], rerun: dict[str, Any]) -> dict[str, Any]:
    """The model service's answer with the store's knowledge of every unit it names."""
    concept_layer = summary["concept_layer"]
    units = _Units(session, urls, model_id)
    for state in ("before", "after"):
        concepts = (live.get(state) or {}).get("concepts") or {}
        for a in concepts.get("active", []):
            units.want(a["layer"], [a["unit"]])
        for t in concepts.get("texts", []):
            for n in t["neurons"]:
                units.want(n["layer"], [n["unit"]])
    ablation = summary["ablation"]
    for group in (ablation or {}).get("groups", []):
        units.want(group["layer"], group["units"][:MAX_ABLATION_INFO])
    shown = live["neurons"][:SHOWN_NEURONS]
    for n in shown:
        units.want(n["layer"], [n["unit"]])
    before, after = _state(live.get("before"), units), _state(live.get("after"), units)
    result = {
        "model": model_id,
        "layer": concept_layer,
        "layers": summary["concept_layers"],
        "labels": summary["labels"],
        "input": {**source, "model_view": png_data_url(live["input_png"])},
        "class_name": summary["class_name"],
        "segmentation_layers": summary["segmentation_layers"],
        "segmentation_neurons": [{**units.entry(n["layer"], n["unit"]), "alignment": round(n["alignment"], 5)} for n in shown],
        "segmentation_neuron_count": len(live["neurons"]),
        "before": before,
        "after": after,
        "ablation": None,
        "rerun": rerun,
        "model_url": urls.html.model(model_id),
        "layer_url": urls.html.layer(model_id, concept_layer),
    }
    if ablation:
        refs = [(g["layer"], u) for g in ablation["groups"] for u in g["units"]][:MAX_ABLATION_INFO]
        result["ablation"] = {
            **ablation,
            "units_info": [units.entry(layer, u) for layer, u in refs],
            "prediction_changed": before["prediction"][0]["label"] != after["prediction"][0]["label"],
        }
    return result
