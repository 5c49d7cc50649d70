"""A layer's directions round-trip through one blob and one row, on both backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store import repository
from store.blobs import BlobStore, MissingBlob
from store.directions import LayerDirections, load_layer_directions, save_layer_directions
from store.models import DirectionSet
from tests.conftest import toy_model


def _layer_directions(seed: int, dataset_id: str = "world") -> LayerDirections:
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(5, 8)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return LayerDirections(
        units=np.array([0, 3, 4, 9, 11]), directions=directions,
        mean_effects=rng.normal(size=(5, 8)).astype(np.float32), thresholds=rng.random(5).astype(np.float32),
        paths="second-order", dataset_id=dataset_id, image_count=100,
    )


def test_layer_directions_round_trip_and_rewrite_in_place(session: Session, tmp_path: Path) -> None:
    record, layers = toy_model()
    model = repository.upsert_model(session, record, layers)
    repository.upsert_dataset(session, "world", "folder:/nowhere", "folder", 100)
    layer_id = model.layers[1].id
    blobs = BlobStore(str(tmp_path / "blobs"))
    assert load_layer_directions(session, blobs, layer_id) is None

    first = _layer_directions(0)
    save_layer_directions(session, blobs, layer_id, first)
    session.commit()
    loaded = load_layer_directions(session, blobs, layer_id)
    assert loaded is not None and loaded.paths == "second-order" and loaded.dimension == 8
    np.testing.assert_array_equal(loaded.units, [0, 3, 4, 9, 11])
    np.testing.assert_array_equal(loaded.directions, first.directions)
    assert loaded.row_of(9) == 3 and loaded.row_of(5) is None and loaded.row_of(12) is None

    second = _layer_directions(1)
    save_layer_directions(session, blobs, layer_id, second)  # a re-run replaces, never duplicates
    session.commit()
    assert session.execute(select(func.count()).select_from(DirectionSet)).scalar_one() == 1
    np.testing.assert_array_equal(load_layer_directions(session, blobs, layer_id, "world").thresholds, second.thresholds)

    (tmp_path / "blobs").rename(tmp_path / "gone")
    with pytest.raises(MissingBlob):
        load_layer_directions(session, blobs, layer_id)


def test_layer_directions_reject_mismatched_shapes() -> None:
    good = _layer_directions(0)
    with pytest.raises(ValueError, match="mean_effects"):
        LayerDirections(units=good.units, directions=good.directions, mean_effects=good.mean_effects[:, :4],
                        thresholds=good.thresholds, paths="x", dataset_id="d", image_count=1)
    with pytest.raises(ValueError, match="thresholds"):
        LayerDirections(units=good.units, directions=good.directions, mean_effects=good.mean_effects,
                        thresholds=good.thresholds[:3], paths="x", dataset_id="d", image_count=1)
