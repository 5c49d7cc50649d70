"""A layer's neuron directions (the second-order lens), stored as one blob per (layer, dataset).

The directions job writes, for every unit n of a layer, its direction r_n (the first principal
component of its most significant effects, unit length), its mean effect b_n over the dataset
and its significance threshold (the 100th-largest ‖φ_n − b_n‖). They live together in one .npz
blob so that a live page (prompt search, concept discovery, nearest units) reads a whole layer in
one blob read; the `direction_sets` row names the blob and says which paths the effects include.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from store.blobs import BlobStore
from store.models import DirectionSet, utcnow
from store.repository import _upsert  # noqa: PLC2701 -- the store's one upsert

ARRAYS = ("units", "directions", "mean_effects", "thresholds")


@dataclass(frozen=True)
class LayerDirections:
    """The arrays of one layer, row i describing unit `units[i]`."""

    units: np.ndarray  # [N] int64 unit indices, ascending
    directions: np.ndarray  # [N, d] float32, each row of unit length (zero where a unit never fires)
    mean_effects: np.ndarray  # [N, d] float32
    thresholds: np.ndarray  # [N] float32
    paths: str  # e.g. "second-order", "second-order+direct", "attention-pool"
    dataset_id: str
    image_count: int

    def __post_init__(self) -> None:
        n = len(self.units)
        if self.directions.ndim != 2 or self.directions.shape[0] != n:
            raise ValueError(f"directions must be [{n}, d], got {self.directions.shape}")
        if self.mean_effects.shape != self.directions.shape:
            raise ValueError(f"mean_effects must be {self.directions.shape}, got {self.mean_effects.shape}")
        if self.thresholds.shape != (n,):
            raise ValueError(f"thresholds must be [{n}], got {self.thresholds.shape}")

    @property
    def dimension(self) -> int:
        return int(self.directions.shape[1])

    def row_of(self, unit_index: int) -> int | None:
        """The row of a unit index, or None when the unit has no direction here."""
        row = int(np.searchsorted(self.units, unit_index))
        return row if row < len(self.units) and int(self.units[row]) == unit_index else None

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            units=np.asarray(self.units, dtype=np.int64),
            directions=np.asarray(self.directions, dtype=np.float32),
            mean_effects=np.asarray(self.mean_effects, dtype=np.float32),
            thresholds=np.asarray(self.thresholds, dtype=np.float32),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, paths: str, dataset_id: str, image_count: int) -> "LayerDirections":
        with np.load(io.BytesIO(data)) as arrays:
            values = {name: arrays[name] for name in ARRAYS}
        return cls(**values, paths=paths, dataset_id=dataset_id, image_count=image_count)


def save_layer_directions(session: Session, blobs: BlobStore, layer_id: int, value: LayerDirections) -> str:
    """Write the blob and upsert the (layer, dataset) row; returns the blob name. Flushes only."""
    order = np.argsort(value.units, kind="stable")
    if not np.array_equal(order, np.arange(len(order))):
        raise ValueError("units must be in ascending order")
    name = blobs.put(value.to_bytes(), suffix=".npz")
    _upsert(
        session,
        DirectionSet.__table__,
        [{
            "layer_id": layer_id,
            "dataset_id": value.dataset_id,
            "blob_uri": name,
            "paths": value.paths,
            "dimension": value.dimension,
            "image_count": value.image_count,
            "created_at": utcnow(),
        }],
        ("layer_id", "dataset_id"),
    )
    return name


def direction_set_row(session: Session, layer_id: int, dataset_id: str | None = None) -> DirectionSet | None:
    """The layer's row for a dataset, or its most recent one when no dataset is named."""
    stmt = select(DirectionSet).where(DirectionSet.layer_id == layer_id)
    if dataset_id is not None:
        stmt = stmt.where(DirectionSet.dataset_id == dataset_id)
    stmt = stmt.order_by(DirectionSet.created_at.desc(), DirectionSet.id.desc()).limit(1)
    return session.execute(stmt).scalar_one_or_none()


def require_direction_set(session: Session, model_id: str, layer: str, dataset_id: str | None = None):
    """(the layer's row, its direction set) for a job that reads a layer's directions; a
    MicroscopeError saying what to run first when the model, the layer or the set is missing."""
    from precompute.errors import MicroscopeError
    from store import repository
    from store.loading import require_layers, require_model

    require_layers(session, require_model(session, model_id), [layer])
    layer_row = repository.get_layer(session, model_id, layer)
    row = direction_set_row(session, layer_row.id, dataset_id)
    if row is None:
        where = f" over dataset {dataset_id!r}" if dataset_id else ""
        raise MicroscopeError(f"layer {layer} of {model_id!r} has no neuron directions{where}; "
                              "run `microscope precompute directions` for it first")
    return layer_row, row


def latest_direction_sets(session: Session, layer_ids: Sequence[int]) -> dict[int, DirectionSet]:
    """`direction_set_row(session, layer_id)` of every listed layer that has one, in one statement."""
    if not layer_ids:
        return {}
    stmt = (select(DirectionSet).where(DirectionSet.layer_id.in_(list(layer_ids)))
            .order_by(DirectionSet.layer_id, DirectionSet.created_at.desc(), DirectionSet.id.desc()))
    out: dict[int, DirectionSet] = {}
    for row in session.execute(stmt).scalars():
        out.setdefault(row.layer_id, row)
    return out


def load_layer_directions(
    session: Session, blobs: BlobStore, layer_id: int, dataset_id: str | None = None
) -> LayerDirections | None:
    """The layer's directions, or None when none are stored; `MissingBlob` if the row's blob is gone."""
    row = direction_set_row(session, layer_id, dataset_id)
    if row is None:
        return None
    return LayerDirections.from_bytes(
        blobs.get(row.blob_uri), paths=row.paths, dataset_id=row.dataset_id, image_count=row.image_count
    )
