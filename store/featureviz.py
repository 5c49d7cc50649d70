"""Writes and reads of feature visualizations and facet probes (the featureviz job's part of
the store; the pages read visualizations through `store.queries`)."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import and_, delete, or_, select
from sqlalchemy.orm import Session

from precompute.errors import MicroscopeError
from store import repository
from store.blobs import BlobStore
from store.models import FacetProbe, FeatureViz, Layer


def replace_featureviz(session: Session, unit_ids: Sequence[int], kinds: Iterable[tuple[str, str | None]],
                       rows: Sequence[dict[str, Any]]) -> None:
    """Replace the units' visualizations of `kinds` ((kind, variant) pairs; variant None:
    every variant of the kind) by `rows`; the units' other visualizations stay."""
    if not unit_ids:
        return
    matches = [FeatureViz.kind == kind if variant is None else and_(FeatureViz.kind == kind, FeatureViz.variant == variant)
               for kind, variant in kinds]
    if matches:
        session.execute(delete(FeatureViz).where(FeatureViz.unit_id.in_(list(unit_ids)), or_(*matches)))
    if rows:
        session.execute(FeatureViz.__table__.insert(), list(rows))


def featureviz_plans(session: Session, unit_ids: Sequence[int]) -> dict[tuple[int, str, str], str | None]:
    """{(unit_id, kind, variant): the plan id recorded in its parameters} for the units."""
    if not unit_ids:
        return {}
    out = {}
    ids = list(unit_ids)
    for start in range(0, len(ids), 500):
        stmt = select(FeatureViz.unit_id, FeatureViz.kind, FeatureViz.variant, FeatureViz.parameters).where(
            FeatureViz.unit_id.in_(ids[start : start + 500]))
        for unit_id, kind, variant, parameters in session.execute(stmt).all():
            out[(unit_id, kind, variant)] = (parameters or {}).get("plan")
    return out


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def save_facet_probe(session: Session, blobs: BlobStore, model_id: str, layer: str, facet: str, weights: np.ndarray,
                     bias: float, parameters: dict[str, Any]) -> None:
    layer_row = repository.get_layer(session, model_id, layer)
    if layer_row is None:
        raise MicroscopeError(f"layer {layer} of '{model_id}' is not in the store")
    if weights.shape != (layer_row.units,):
        raise MicroscopeError(f"a probe on {layer} needs {layer_row.units} weights, got {weights.shape}")
    uri = blobs.put(_npy(weights), ".npy")
    session.execute(delete(FacetProbe).where(FacetProbe.layer_id == layer_row.id, FacetProbe.facet == facet))
    session.add(FacetProbe(layer_id=layer_row.id, facet=facet, weights_uri=uri, bias=float(bias), parameters=parameters))


def facet_probes(session: Session, model_id: str) -> list[dict[str, Any]]:
    """Every probe of a model: facet, layer, weights blob, bias, parameters."""
    stmt = (select(FacetProbe.facet, Layer.name, FacetProbe.weights_uri, FacetProbe.bias, FacetProbe.parameters)
            .join(Layer, Layer.id == FacetProbe.layer_id).where(Layer.model_id == model_id)
            .order_by(FacetProbe.facet, Layer.position))
    return [{"facet": f, "layer": n, "weights_uri": u, "bias": b, "parameters": p or {}}
            for f, n, u, b, p in session.execute(stmt).all()]


def load_facet_probe(session: Session, blobs: BlobStore, model_id: str, facet: str, layer: str):
    """The `precompute.featureviz.objectives.FacetProbe` of a model's facet on `layer`; a
    probe stored only on other layers (or none at all) is an error that names them."""
    from precompute.featureviz.objectives import FacetProbe as Probe

    rows = [row for row in facet_probes(session, model_id) if row["facet"] == facet]
    match = [row for row in rows if row["layer"] == layer]
    if not match:
        if rows:
            raise MicroscopeError(f"facet probe '{facet}' of '{model_id}' is trained on {', '.join(r['layer'] for r in rows)}, "
                                  f"not on {layer}; train one there with `microscope featureviz train-facet`")
        raise MicroscopeError(f"'{model_id}' has no facet probe '{facet}'; train one with `microscope featureviz train-facet`")
    row = match[0]
    weights = np.load(io.BytesIO(blobs.get(row["weights_uri"])), allow_pickle=False)
    return Probe(model_id, layer, facet, tuple(float(v) for v in weights), float(row["bias"]))
