"""The typographic probe's request handling, shared by its page and its API: read the picture
(upload, dataset image, or an upload kept from a moment ago), check the attack and the label
set, render the attack, and run before + after (+ silenced) through the model service."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from fastapi import Request, UploadFile
from sqlalchemy.orm import Session

from app.label_sets import live_labels
from app.live import read_upload, upload_limits
from app.pages.common import require_layer, require_model
from app.pages.probe import default_label_set, default_layer
from app.pages.typographic import typographic_result
from app.uploads import decode_image
from app.urls import request_urls
from precompute.errors import Problem
from precompute.typographic import Placement, ProbeItem, check_text, fixed_placements, render_attack
from precompute.zeroshot import label_set
from store import queries
from store.blobs import BlobStore

MAX_SILENCED = 512
KEPT_UPLOADS = 64
KEEP_SECONDS = 900


@dataclass(frozen=True)
class AttackForm:
    text: str
    setup: str = "fixed"  # "fixed" | "custom"
    x: float = 0.5
    y: float = 0.5
    size: float = 0.17
    color: str = "#ffffff"
    outline: str = "#000000"
    rotation: float = 0.0
    labels: str | None = None  # a built-in label set
    custom_labels: str | None = None  # the user's labels, one a line or comma separated
    silence: str = ""  # "" | "listed" | "3,17,40"
    top_k: int = 5
    top_units: int = 8


class KeptUploads:
    """Uploads kept for a few minutes by their sha256, so that 'silence these units and
    re-run' needs no second upload. Per process: another server process answers 410."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self._items[key] = (time.monotonic(), data)
            self._items.move_to_end(key)
            while len(self._items) > KEPT_UPLOADS:
                self._items.popitem(last=False)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._items.get(key)
            if item is None or time.monotonic() - item[0] > KEEP_SECONDS:
                return None
            return item[1]


def _kept(request: Request) -> KeptUploads:
    state = request.app.state
    if not hasattr(state, "typographic_uploads"):
        state.typographic_uploads = KeptUploads()
    return state.typographic_uploads


def read_picture(request: Request, session: Session, kept: KeptUploads, *, upload: UploadFile | None,
                 dataset: str | None, position: int | None,
                 upload_ref: str | None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(RGB PIL image, source description, how to name it again) from one of the three sources a
    live page accepts: a new upload (kept in `kept` for a re-run), an upload kept earlier, or a
    dataset image. The same limits and 4xx reasons for every page."""
    limits = upload_limits(request)
    if upload is not None and (upload.filename or upload.size):
        data = read_upload(upload, limits)
        decoded = decode_image(data, limits)
        kept.put(decoded.sha256, data)
        source = {"source": "upload", "filename": (upload.filename or "")[:200] or None, **decoded.summary()}
        again: dict[str, Any] = {"upload_ref": decoded.sha256}
    elif upload_ref:
        data = kept.get(upload_ref)
        if data is None:
            raise Problem(410, "upload-expired", "the uploaded picture is no longer kept here; upload it again")
        decoded = decode_image(data, limits)
        source = {"source": "upload", "filename": None, **decoded.summary()}
        again = {"upload_ref": upload_ref}
    elif dataset and position is not None:
        row = queries.dataset_image(session, dataset, position)
        if row is None:
            raise Problem(404, "unknown-image", f"Dataset {dataset!r} has no image at position {position}.")
        store: BlobStore = request.app.state.blobs
        try:
            stored = store.get(row["blob_uri"])
        except FileNotFoundError:
            raise Problem(404, "missing-blob", f"The image file of {dataset}/{position} is missing from the blob store.") from None
        decoded = decode_image(stored, limits)
        source = {"source": "dataset", "dataset": dataset, "position": position, **decoded.summary()}
        again = {"dataset": dataset, "position": position}
    else:
        raise Problem(400, "no-image", "upload an image file, or pick a dataset image (dataset and position)")
    return decoded.image.convert("RGB"), source, again


def _labels(form: AttackForm, arch: str):
    if form.custom_labels and form.custom_labels.strip():
        separator = "\n" if "\n" in form.custom_labels else ","
        return label_set(labels=[part for part in form.custom_labels.split(separator) if part.strip()] or [""])
    return label_set(form.labels or default_label_set(arch))


def _silence(value: str) -> str | tuple[int, ...]:
    value = (value or "").strip()
    if not value:
        return ()
    if value == "listed":
        return "listed"
    try:
        units = tuple(sorted({int(part) for part in value.split(",") if part.strip()}))
    except ValueError:
        raise Problem(422, "bad-silence", "silence is 'listed' or unit indices separated by commas") from None
    if len(units) > MAX_SILENCED or any(u < 0 for u in units):
        raise Problem(422, "bad-silence", f"silence at most {MAX_SILENCED} units, by their non-negative indices")
    return units


def _placements(form: AttackForm, width: int, height: int) -> list[Placement]:
    if form.setup == "fixed":
        return fixed_placements(width, height)
    if form.setup != "custom":
        raise Problem(422, "bad-setup", "setup is 'fixed' (the article's automated setup) or 'custom'")
    placement = Placement(form.x, form.y, form.size, form.color or "#ffffff", form.outline or None, form.rotation)
    placement.validate()
    return [placement]


def typographic_probe(
    request: Request, session: Session, *, model_id: str, layer: str | None, form: AttackForm, upload: UploadFile | None,
    dataset: str | None, position: int | None, upload_ref: str | None,
) -> dict[str, Any]:
    model = require_model(session, model_id)
    layers = queries.layers_of(session, [model_id]).get(model_id, [])
    layer = layer or default_layer(layers) or ""
    require_layer(session, model_id, layer)
    text = check_text(form.text)
    labels = live_labels(request, session, model, _labels(form, model["arch"]))
    silence = _silence(form.silence)
    if form.setup == "custom":
        _placements(form, 1, 1)  # a bad placement is refused before the picture is read
    image, source, rerun_source = read_picture(request, session, _kept(request), upload=upload, dataset=dataset,
                                               position=position, upload_ref=upload_ref)
    placements = _placements(form, *image.size)
    attacked = render_attack(image, text, placements)
    live = request.app.state.model_service.typographic(
        model_id, layer, ProbeItem(image, attacked.image, silence), labels, top_k=form.top_k, top_units=form.top_units)
    attack = {
        "text": text,
        "setup": form.setup,
        "placements": [{"x": p.x, "y": p.y, "size": p.size, "color": p.color, "outline": p.outline, "rotation": p.rotation}
                       for p in placements],
        "pixel_cover": round(attacked.pixel_cover, 5),
    }
    label_info = {"id": labels.id, "classes": len(labels.names), "custom": labels.user,
                  "names": list(labels.names) if labels.user else None}
    rerun = {
        "model": model_id, "layer": layer, "text": text, "setup": form.setup, "x": form.x, "y": form.y, "size": form.size,
        "color": form.color, "outline": form.outline, "rotation": form.rotation,
        "labels": None if labels.user else labels.id,
        "custom_labels": "\n".join(labels.names) if labels.user else None,
        "top_k": form.top_k, "top_units": form.top_units, "silence": "listed", **rerun_source,
    }
    return typographic_result(session, request_urls(request), model_id=model_id, layer_name=layer, live=live, source=source,
                              attack=attack, labels=label_info, rerun=rerun)
