"""Registering models in the store, and loading a registered model back from its record (for
the jobs and for the server's live probes alike)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from precompute.architectures import ArchitectureSpec, architecture
from precompute.errors import MicroscopeError
from precompute.registry import LoadedModel, load_embedded, load_model
from store import repository


def register(session: Session, loaded: LoadedModel, description: str = "") -> None:
    record = loaded.record() | {"description": description}
    repository.upsert_model(session, record, loaded.layer_records())
    session.commit()


def require_model(session: Session, model_id: str):
    """The registered model's row, or an error naming the models that are registered."""
    row = repository.get_model(session, model_id)
    if row is None:
        known = ", ".join(m.id for m in repository.list_models(session)) or "none"
        raise MicroscopeError(f"model '{model_id}' is not registered (registered: {known})")
    return row


def require_layers(session: Session, model, layers) -> ArchitectureSpec:
    """Check every named layer exists in the model's architecture and in the store, before any
    work; returns the architecture spec."""
    spec = architecture(model.arch)
    for layer in layers:
        spec.layer(layer)  # UnknownLayerError names the valid layers
        if repository.get_layer(session, model.id, layer) is None:
            raise MicroscopeError(f"layer {layer} of '{model.id}' is not in the store; register the model again")
    return spec


def load_registered(session: Session, model_id: str, device: str = "cpu") -> LoadedModel:
    """Load a model the way it was registered (same architecture and same weights)."""
    row = require_model(session, model_id)
    if row.source == "embedded":
        return load_embedded(row.arch, model_id=row.id, device=device)
    if row.source == "pretrained":
        return load_model(row.id, row.arch, pretrained=row.pretrained_tag, device=device)
    if row.checkpoint_path:
        if not Path(row.checkpoint_path).is_file():
            raise MicroscopeError(f"model '{model_id}' was registered from {row.checkpoint_path}, which is gone")
        from precompute.checkpoints import sha256_of

        if row.checkpoint_sha256 and sha256_of(Path(row.checkpoint_path)) != row.checkpoint_sha256:
            raise MicroscopeError(f"{row.checkpoint_path} changed since model '{model_id}' was registered; register it again")
        return load_model(row.id, row.arch, checkpoint=row.checkpoint_path, device=device)
    return load_model(row.id, row.arch, device=device)
