"""/discover's request handling, shared by its page and its API: read the picture (upload, dataset
image, or an upload kept from a moment ago), check the concept layers, the class name, the
segmentation layers and the ablation, load the layers' directions and decompositions from the
store (once per direction set and decompositions), and run the picture through the model service."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fastapi import Request, UploadFile
from sqlalchemy.orm import Session

from app.label_sets import live_labels
from app.live_typographic import KeptUploads, read_picture
from app.pages.common import require_model
from app.pages.discover import discover_result, tower_family
from app.pages.typographic import default_label_set
from app.urls import request_urls
from precompute.errors import Problem
from store import queries
from store.blobs import BlobStore
from store.directions import latest_direction_sets, load_layer_directions

MAX_ABLATED = 512
MAX_CLASS_CHARS = 64


@dataclass(frozen=True)
class DiscoverForm:
    # The concept layers: `layer` (one, as older clients send it) and `layers` (each entry one
    # name or a comma list) together; neither: every layer with directions and decompositions.
    layer: str | None = None
    class_name: str | None = None  # None: no segmentation; "" or blanks: refused
    seg_layers: str | None = None  # "" (default), "vit-late", "stored" or a comma list of layers
    ablate: str = ""  # unit indices ("1,2,3") and layer:index references ("transformer.resblocks.3.mlp:17")
    ablate_layer: str | None = None  # the layer of bare indices; default: `layer`, else the last concept layer
    ablate_mode: str = "zero"  # "zero" | "mean"
    labels: str | None = None  # a built-in label set for the zero-shot prediction
    top: int = 10
    layers: tuple[str, ...] = ()


class _Knowledge:
    """LayerKnowledge per (layer, direction blob, decompositions), built once: directions, means,
    thresholds and the layer's decompositions as a dense matrix. The direction blob is content
    addressed and the decompositions are keyed by their fingerprint, so a new job result is a new
    entry and a request never reads the layer's blob or terms again while they stand."""

    def __init__(self, max_entries: int = 32) -> None:
        from app.cache import TTLCache

        self._items = TTLCache(None, max_entries)

    def get(self, session: Session, blobs: BlobStore, layer: dict[str, Any], row: Any, with_terms: bool,
            fingerprint: Any = None) -> Any:
        """`row`: the layer's latest direction set (None: refused); `fingerprint`: its
        decompositions' (store.queries.decomposition_fingerprints), when `with_terms`."""
        key = self._key(layer, row, with_terms, fingerprint)
        return self._items.get(key, lambda: self._load(session, blobs, layer, row, with_terms))

    def concept_set(self, session: Session, blobs: BlobStore, layers: list[dict[str, Any]], rows: dict[int, Any],
                    fingerprints: dict[int, Any]) -> tuple[Any, ...]:
        """The concept layers with their decompositions on one set of texts (on_common_texts),
        built once per combination of the layers' own entries."""
        from precompute.discovery import on_common_texts

        keys = tuple(self._key(l, rows.get(l["id"]), True, fingerprints.get(l["id"])) for l in layers)
        parts = [self.get(session, blobs, l, rows.get(l["id"]), True, fingerprints.get(l["id"])) for l in layers]
        return self._items.get(("common-texts", keys), lambda: on_common_texts(parts))

    @staticmethod
    def _key(layer: dict[str, Any], row: Any, with_terms: bool, fingerprint: Any) -> tuple:
        if row is None:
            raise Problem(422, "no-directions", f"{layer['name']} has no stored directions; run `microscope precompute "
                          "directions` for it first")
        if with_terms and fingerprint is None:
            raise _no_decompositions(layer)
        return (layer["id"], row.blob_uri, with_terms, fingerprint if with_terms else None)

    @staticmethod
    def _load(session: Session, blobs: BlobStore, layer: dict[str, Any], row: Any, with_terms: bool) -> Any:
        from precompute.discovery import LayerKnowledge, dense_coefficients

        value = load_layer_directions(session, blobs, layer["id"], row.dataset_id)
        texts: tuple[str, ...] = ()
        coefficients = None
        if with_terms:
            terms: dict[int, list[tuple[str, float]]] = {}
            for unit, text, coefficient in queries.layer_decompositions(session, layer["id"]):
                terms.setdefault(int(unit), []).append((text, float(coefficient)))
            if not terms:
                raise _no_decompositions(layer)
            texts = tuple(sorted({text for pairs in terms.values() for text, _ in pairs}))
            coefficients = dense_coefficients(value.units, texts, terms)
        return LayerKnowledge(layer["name"], value.units, value.directions, value.mean_effects, value.thresholds,
                              texts, coefficients)


def _no_decompositions(layer: dict[str, Any]) -> Problem:
    return Problem(422, "no-decompositions", f"{layer['name']} has no decompositions; run `microscope precompute "
                   "decompose` for it first")


def _require_listed_layer(model_id: str, by_name: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """require_layer over the model's layers already read (the same 404 and reason)."""
    layer = by_name.get(name)
    if layer is None:
        known = ", ".join(list(by_name)[:12])
        raise Problem(404, "unknown-layer", f"Model {model_id!r} has no layer {name!r}. Layers include: {known}.")
    return layer


def _state(request: Request, name: str, factory):
    state = request.app.state
    if not hasattr(state, name):
        setattr(state, name, factory())
    return getattr(state, name)


def layer_names(values) -> list[str]:
    """Layer names from form entries, each one name or a comma list; blanks and repeats dropped."""
    return list(dict.fromkeys(part.strip() for value in values or () for part in (value or "").split(",") if part.strip()))


_INDEX = re.compile(r"-?[0-9]+")


def _ablated_units(value: str, default_layer: str, model_id: str, by_name: dict[str, dict[str, Any]]) -> dict[str, list[int]]:
    """The units `ablate` names, by layer in the model's order: a bare index is a unit of
    `default_layer`, `layer:index` a unit of any layer (layer names hold no colon)."""
    wanted: dict[str, set[int]] = {}
    for item in (part.strip() for part in (value or "").replace(" ", ",").split(",")):
        if not item:
            continue
        layer, colon, index = item.rpartition(":")
        if not _INDEX.fullmatch(index) or (colon and not layer):
            raise Problem(422, "bad-ablation", f"{item[:80]!r} names no unit: ablate lists unit indices (3,17) or "
                          "layer:index references (transformer.resblocks.3.mlp:17), separated by commas")
        wanted.setdefault(layer if colon else default_layer, set()).add(int(index))
    if sum(len(units) for units in wanted.values()) > MAX_ABLATED:
        raise Problem(422, "bad-ablation", f"ablate at most {MAX_ABLATED} units at once")
    for name, units in wanted.items():
        layer = _require_listed_layer(model_id, by_name, name)
        if min(units) < 0:
            raise Problem(422, "unknown-unit", f"unit indices start at 0; there is no unit {min(units)} of {name}")
        if max(units) >= int(layer["units"]):
            raise Problem(422, "unknown-unit", f"{name} has units 0 to {int(layer['units']) - 1}; there is no "
                          f"unit {max(units)}")
    position = {name: i for i, name in enumerate(by_name)}
    return {name: sorted(wanted[name]) for name in sorted(wanted, key=position.__getitem__)}


def direction_sets(session: Session, layers: list[dict[str, Any]]) -> dict[int, Any]:
    """Each layer's latest direction set, by layer id (one statement for the model's layers)."""
    return latest_direction_sets(session, [l["id"] for l in layers])


def prepare(request: Request, session: Session, model_id: str, form: DiscoverForm) -> tuple[Any, dict[str, Any]]:
    """Every check that needs no picture, then the model service's request and a summary of it."""
    from precompute.discovery import (ABLATION_MODES, Ablation, DiscoverRequest, check_layer_set, default_concept_layers,
                                      segmentation_layers)
    from precompute.zeroshot import label_set

    model = require_model(session, model_id)
    layers = queries.layers_of(session, [model_id]).get(model_id, [])
    by_name = {l["name"]: l for l in layers}
    family, depth = tower_family(layers)
    check_layer_set(family, form.seg_layers)  # a form mistake, said before what the store lacks
    rows = direction_sets(session, layers)
    stored = [l["name"] for l in layers if l["id"] in rows]
    blobs: BlobStore = request.app.state.blobs
    knowledge: _Knowledge = _state(request, "discover_knowledge", _Knowledge)

    if not 1 <= form.top <= 50:
        raise Problem(422, "bad-top", "top is between 1 and 50 texts")
    labels = live_labels(request, session, model, label_set(form.labels or default_label_set(model["arch"])))
    fingerprints = queries.decomposition_fingerprints(session, [l["id"] for l in layers if l["id"] in rows])
    asked = layer_names(((form.layer,) if form.layer else ()) + tuple(form.layers))
    if asked:
        for name in asked:
            _require_listed_layer(model_id, by_name, name)
        concept_layers = [name for name in by_name if name in asked]  # the model's order
    else:
        if not stored:
            raise Problem(422, "no-directions", f"no layer of {model_id} has stored directions; run `microscope precompute "
                          "directions` and `microscope precompute decompose` first")
        decomposed = [name for name in stored if by_name[name]["id"] in fingerprints]
        if not decomposed:
            raise _no_decompositions(by_name[stored[-1]])
        concept_layers = default_concept_layers(family, depth, decomposed)
    concepts = knowledge.concept_set(session, blobs, [by_name[name] for name in concept_layers], rows, fingerprints)
    concept_layer = concept_layers[-1]

    class_name = None
    seg = ()
    if form.class_name is not None:
        class_name = form.class_name.strip()
        if not class_name:
            raise Problem(422, "empty-class-name", "the class name to segment is empty; give a class name, or leave the "
                          "field out to skip segmentation")
        if len(class_name) > MAX_CLASS_CHARS:
            raise Problem(422, "class-name-too-long", f"class names are at most {MAX_CLASS_CHARS} characters")
        names = segmentation_layers(family, depth, stored, form.seg_layers)
        for name in names:
            layer = by_name.get(name)
            if layer is None:
                raise Problem(404, "unknown-layer", f"Model {model_id!r} has no layer {name!r}.")
            if not (layer.get("spatial_h") or layer.get("spatial")):
                raise Problem(422, "layer-not-spatial", f"{name} has no spatial map to segment with")
        seg = tuple(knowledge.get(session, blobs, by_name[name], rows.get(by_name[name]["id"]), False) for name in names)
        if family == "vit":
            # a ViT's segmentation layers must be MLP layers of this tower
            bad = [name for name in names if not name.endswith(".mlp")]
            if bad:
                raise Problem(422, "layer-set-needs-mlp", f"segmentation on a ViT reads MLP neurons; {bad[0]} is not one")
    elif form.seg_layers:
        raise Problem(422, "no-class-name", "segmentation layers were given without a class name to segment")

    ablations = []
    if form.ablate_mode not in ABLATION_MODES:
        raise Problem(422, "bad-ablation-mode", f"ablation mode is one of {', '.join(ABLATION_MODES)}")
    ablate_layer = form.ablate_layer or form.layer or concept_layer
    silenced = _ablated_units(form.ablate, ablate_layer, model_id, by_name)
    for name, units in silenced.items():
        values = None
        if form.ablate_mode == "mean":
            means = queries.unit_means(session, by_name[name]["id"], units)
            missing = [u for u in units if means.get(u) is None]
            if missing:
                raise Problem(422, "no-unit-means", f"unit {missing[0]} of {name} has no stored dataset mean; "
                              "run `microscope precompute examples` for the layer, or ablate to zero")
            values = tuple(float(means[u]) for u in units)
        ablations.append(Ablation(name, tuple(units), form.ablate_mode, values))
    ablation = None
    if silenced:
        first = next(iter(silenced))
        ablation = {"layer": first, "units": silenced[first], "mode": form.ablate_mode,
                    "groups": [{"layer": name, "units": units} for name, units in silenced.items()],
                    "refs": [f"{name}:{u}" for name, units in silenced.items() for u in units]}
    live_request = DiscoverRequest(concepts, seg, class_name, labels, tuple(ablations), top_texts=form.top)
    summary = {
        "concept_layer": concept_layer,
        "concept_layers": concept_layers,
        "class_name": class_name,
        "segmentation_layers": [k.layer for k in seg],
        "labels": labels.id,
        "ablation": ablation,
        "family": family,
        "stored_layers": stored,
    }
    return live_request, summary


def discover(request: Request, session: Session, *, model_id: str, form: DiscoverForm, upload: UploadFile | None,
             dataset: str | None, position: int | None, upload_ref: str | None) -> dict[str, Any]:
    live_request, summary = prepare(request, session, model_id, form)
    kept: KeptUploads = _state(request, "discover_uploads", KeptUploads)
    image, source, again = read_picture(request, session, kept, upload=upload, dataset=dataset, position=position,
                                        upload_ref=upload_ref)
    live = request.app.state.model_service.discover(model_id, image, live_request)
    layers = summary["concept_layers"]
    rerun = {"model": model_id, "layer": layers[0] if len(layers) == 1 else None, "layers": ",".join(layers),
             "class_name": summary["class_name"],
             "seg_layers": form.seg_layers or None, "labels": summary["labels"], "top": form.top, **again}
    return discover_result(session, request_urls(request), model_id=model_id, live=live, source=source, summary=summary,
                           rerun=rerun)



def cues(request: Request, session: Session, *, model_id: str, source: str, target: str, layers: str | None,
         top: int = 10) -> dict[str, Any]:
    """Spurious cues for (source -> target) from the decompositions of the model's layers."""
    from precompute.discovery import CuesRequest
    from precompute.zeroshot import label_set

    model = require_model(session, model_id)
    source, target = (source or "").strip(), (target or "").strip()
    if not source or not target:
        raise Problem(422, "empty-class-name", "name both classes: the pictures' class and the class to push them toward")
    if source.lower() == target.lower():
        raise Problem(422, "same-classes", "the two classes must differ")
    if not 1 <= top <= 50:
        raise Problem(422, "bad-top", "top is between 1 and 50 words")
    all_layers = queries.layers_of(session, [model_id]).get(model_id, [])
    by_name = {l["name"]: l for l in all_layers}
    rows = direction_sets(session, all_layers)
    stored = [l["name"] for l in all_layers if l["id"] in rows]
    names = [part.strip() for part in (layers or "").split(",") if part.strip()] or stored
    for name in names:
        if name not in by_name:
            raise Problem(404, "unknown-layer", f"Model {model_id!r} has no layer {name!r}.")
    knowledge: _Knowledge = _state(request, "discover_knowledge", _Knowledge)
    blobs: BlobStore = request.app.state.blobs
    fingerprints = queries.decomposition_fingerprints(session, [by_name[name]["id"] for name in names])
    known = [knowledge.get(session, blobs, by_name[name], rows.get(by_name[name]["id"]), True,
                           fingerprints.get(by_name[name]["id"])) for name in names]
    from precompute.discovery import on_common_texts

    known = on_common_texts(known)
    labels = label_set(default_label_set(model["arch"]))
    if source.lower() not in (n.lower() for n in labels.names) or target.lower() not in (n.lower() for n in labels.names):
        labels = label_set(labels=[source, target])
    # the verification (toy models) classifies; a real CLIP's cues need no class embeddings
    labels = live_labels(request, session, model, labels, required=False)
    live = request.app.state.model_service.cues(model_id, CuesRequest(tuple(known), source, target, labels, top=top))
    from app.pages.cues import cues_result

    return cues_result(session, request_urls(request), model_id=model_id, source=source, target=target, layers=names,
                       labels=labels.id, live=live)
