"""The live features, shared by their pages and their API: probing an image and finding the
units nearest to a text prompt. Both run a model through the process's model service."""

from __future__ import annotations

from typing import Any

from fastapi import Request, UploadFile
from sqlalchemy.orm import Session

from app.model_service import ModelService
from app.pages.common import require_layer, require_model
from app.pages.probe import default_layer, probe_result
from app.pages.search import PROMPT_READINGS, prompt_page
from app.uploads import ACCEPTED, UploadLimits, decode_image
from app.urls import request_urls
from precompute.errors import Problem
from store import queries
from store.blobs import BlobStore


def upload_limits(request: Request) -> UploadLimits:
    settings = request.app.state.settings
    return UploadLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_upload_pixels)


def upload_limits_info(request: Request) -> dict[str, Any]:
    limits = upload_limits(request)
    return {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels, "max_side": limits.max_side, "formats": ACCEPTED}


def _service(request: Request) -> ModelService:
    return request.app.state.model_service


def read_upload(upload: UploadFile, limits: UploadLimits) -> bytes:
    """The upload's bytes, reading at most one byte past the limit (BodySizeLimit has already
    refused bodies far beyond it; this catches the rest without trusting any header)."""
    data_bytes = upload.file.read(limits.max_bytes + 1)
    if len(data_bytes) > limits.max_bytes:
        raise Problem(413, "file-too-large", f"the file is larger than {limits.max_bytes:,} bytes")
    return data_bytes


def probe(
    request: Request, session: Session, *, model_id: str, layer: str | None, top_k: int, upload: UploadFile | None,
    dataset: str | None, position: int | None,
) -> dict[str, Any]:
    require_model(session, model_id)
    layers = queries.layers_of(session, [model_id]).get(model_id, [])
    layer = layer or default_layer(layers) or ""
    require_layer(session, model_id, layer)
    limits = upload_limits(request)
    if upload is not None and (upload.filename or upload.size):
        decoded = decode_image(read_upload(upload, limits), limits)
        source = {"source": "upload", "filename": (upload.filename or "")[:200] or None, **decoded.summary()}
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
    else:
        raise Problem(400, "no-image", "upload an image file, or pick a dataset image (dataset and position)")
    live = _service(request).probe(model_id, layer, decoded.image, top_k)
    return probe_result(session, request_urls(request), model_id=model_id, layer_name=layer, live=live, source=source)


def prompt_search(request: Request, session: Session, *, text: str, model_id: str, layer: str | None, k: int,
                  reading: str = "class") -> dict[str, Any]:
    text = text.strip()
    if not text:
        raise Problem(422, "empty-prompt", "the prompt is empty")
    if reading not in PROMPT_READINGS:
        raise Problem(422, "unknown-reading", f"reading must be one of {', '.join(PROMPT_READINGS)}, not {reading!r}")
    require_model(session, model_id)
    layers = queries.layers_of(session, [model_id]).get(model_id, [])
    if layer:
        require_layer(session, model_id, layer)
    scope = [entry["id"] for entry in layers if not layer or entry["name"] == layer]
    urls = request_urls(request)
    cache = request.app.state.vectors
    if not queries.any_directions(session, scope):
        # Nothing to rank: say so without spending a forward pass of the text tower.
        return prompt_page(session, cache, [], urls, prompt=text, model_id=model_id, layer=layer, k=k, reading=reading)
    service = _service(request)
    vector = service.encode_class_name(model_id, text) if reading == "class" else service.encode_text(model_id, text)
    return prompt_page(session, cache, vector, urls, prompt=text, model_id=model_id, layer=layer, k=k, reading=reading)
