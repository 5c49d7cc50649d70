"""One function per page that builds the page's data as plain JSON-able dicts.

Datasette style: the HTML route and its JSON twin both call the same builder, so whatever the
page shows is exactly what the API returns. Builders take the session and the app's root path
(so links stay right behind a reverse proxy mounted under a prefix) and never see a request.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.store import repository
from app.store.models import Layer, Model

API_PREFIX = "/api/v1"


class NotFound(Exception):
    """A named thing does not exist. Rendered as a JSON 404 for the API, an HTML 404 for pages."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # stable, machine-readable: "unknown-model"
        self.detail = detail  # human-readable sentence


def _model_summary(model: Model, base: str) -> dict[str, Any]:
    return {
        "id": model.id,
        "arch": model.arch,
        "source": model.source,
        "pretrained_tag": model.pretrained_tag,
        "checkpoint_sha256": model.checkpoint_sha256,
        "image_size": model.image_size,
        "description": model.description,
        "layer_count": len(model.layers),
        "unit_count": sum(layer.units for layer in model.layers),
        "created_at": model.created_at.isoformat(),
        "url": f"{base}/models/{model.id}",
        "api_url": f"{base}{API_PREFIX}/models/{model.id}",
    }


def _layer(layer: Layer) -> dict[str, Any]:
    return {
        "name": layer.name,
        "kind": layer.kind,
        "units": layer.units,
        "spatial": list(layer.spatial) if layer.spatial else None,
        "has_class_token": layer.has_class_token,
        "position": layer.position,
    }


def models_index(session: Session, base: str = "") -> dict[str, Any]:
    models = [_model_summary(m, base) for m in repository.list_models(session)]
    return {"models": models, "count": len(models), "api_url": f"{base}{API_PREFIX}/models"}


def model_detail(session: Session, model_id: str, base: str = "") -> dict[str, Any]:
    model = repository.get_model(session, model_id)
    if model is None:
        raise NotFound("unknown-model", f"No model with id {model_id!r} is registered.")
    return {
        **_model_summary(model, base),
        "checkpoint_path": model.checkpoint_path,
        "preprocess": model.preprocess,
        "layers": [_layer(layer) for layer in sorted(model.layers, key=lambda l: (l.position, l.name))],
    }
