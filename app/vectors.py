"""Per-layer vector matrices, loaded from blobs once and kept a while: nearest units, the
units nearest to a text prompt, and word arithmetic over image-based word embeddings.

A layer's unit directions live in one content-addressed .npz blob per (layer, dataset)
(store.directions, written by the directions job), read once and kept under its blob name, so
the entry never goes stale: a new direction set is a new name. Word embeddings are one
content-addressed blob per layer, cached the same way. numpy is imported on first use.

A blob that the database names but the store has lost is an absence, not an error: a layer
whose direction blob is missing gives an empty matrix that names it in `missing`, and a
missing word embedding raises `MissingBlob` for the page to say so.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from app.cache import TTLCache
from store import queries
from store.blobs import BlobStore, MissingBlob

if TYPE_CHECKING:
    import numpy as np

NEAREST_BASES = ("direction", "word_embedding", "decomposition")


@dataclass(frozen=True)
class UnitMatrix:
    """Row-normalised vectors of the units of one layer that have one."""

    indices: Any  # np.ndarray[int]: unit index of each row
    vectors: Any  # np.ndarray[float32] (rows, dim), unit length (zero rows stay zero)
    uris: tuple[str, ...] = ()
    missing: frozenset[str] = frozenset()  # stored references whose blob is missing from the store
    # Every row's nearest rows, built on first use and kept with the matrix: a unit page then
    # looks its neighbours up instead of scoring the whole layer on each view.
    _neighbours: dict[int, tuple[Any, Any]] = field(default_factory=dict, compare=False, repr=False)
    _neighbours_lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def row_of(self, index: int) -> int | None:
        import numpy as np

        pos = int(np.searchsorted(self.indices, index))
        if pos < len(self.indices) and int(self.indices[pos]) == index:
            return pos
        return None

    def nearest(self, query: Any, k: int, exclude: int | None = None) -> list[tuple[int, float]]:
        """(unit index, cosine similarity) of the k rows most similar to `query` (unit length)."""
        import numpy as np

        if len(self.indices) == 0:
            return []
        sims = self.vectors @ query
        order = np.argsort(-sims, kind="stable")
        out: list[tuple[int, float]] = []
        for row in order:
            index = int(self.indices[row])
            if index == exclude:
                continue
            out.append((index, float(sims[row])))
            if len(out) == k:
                break
        return out

    def neighbours(self, index: int, k: int) -> list[tuple[int, float]]:
        """`nearest(vectors[row of index], k, exclude=index)`, from the table of all rows."""
        row = self.row_of(index)
        if row is None:
            return []
        with self._neighbours_lock:
            if k not in self._neighbours:
                self._neighbours[k] = self._neighbour_table(k)
        rows, sims = self._neighbours[k]
        return [(int(self.indices[r]), float(s)) for r, s in zip(rows[row], sims[row])]

    def _neighbour_table(self, k: int, chunk: int = 1024) -> tuple[Any, Any]:
        import numpy as np

        count = len(self.indices)
        k = min(k, count - 1)
        rows = np.empty((count, k), dtype=np.int64)
        sims = np.empty((count, k), dtype=np.float32)
        for start in range(0, count, chunk):
            block = self.vectors[start:start + chunk] @ self.vectors.T
            block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf  # a unit is not its own neighbour
            order = np.argsort(-block, axis=1, kind="stable")[:, :k]
            rows[start:start + len(block)] = order
            sims[start:start + len(block)] = np.take_along_axis(block, order, axis=1)
        return rows, sims


def load_npy(blobs: BlobStore, uri: str) -> "np.ndarray":
    import numpy as np

    return np.load(io.BytesIO(blobs.get(uri)), allow_pickle=False)


def normalise_rows(matrix: "np.ndarray") -> "np.ndarray":
    import numpy as np

    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


class VectorCache:
    def __init__(self, blobs: BlobStore, ttl: float = 60.0, max_entries: int = 64) -> None:
        self.blobs = blobs
        self._cache = TTLCache(ttl, max_entries)

    def _get(self, key: tuple, load: Callable[[], Any], expires: bool) -> Any:
        # Content-addressed keys (blob URIs) never go stale; per-layer assemblies do.
        return self._cache.get(key, load) if expires else self._cache.get(key, load, None)

    def invalidate(self, key_prefix: tuple = ()) -> None:
        self._cache.invalidate(key_prefix)

    # -- unit directions in the joint embedding space ------------------------------------------
    def directions(self, session: Session, layer_id: int) -> UnitMatrix | None:
        """The layer's unit directions (its most recent direction set), rows of unit length;
        units whose direction is zero (they never fired) are left out. None when none is stored."""
        from store.directions import direction_set_row

        row = direction_set_row(session, layer_id)
        if row is None:
            return None
        uri, meta = row.blob_uri, {"paths": row.paths, "dataset_id": row.dataset_id, "image_count": row.image_count}

        def load() -> UnitMatrix:
            import numpy as np

            from store.directions import LayerDirections

            try:
                value = LayerDirections.from_bytes(self.blobs.get(uri), **meta)
            except MissingBlob:
                return UnitMatrix(np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), (), frozenset({uri}))
            keep = np.linalg.norm(value.directions, axis=1) > 0
            return UnitMatrix(np.asarray(value.units[keep], dtype=np.int64), normalise_rows(value.directions[keep]), (uri,))

        matrix = self._cache.get(("directions", layer_id, uri), load, None)
        if matrix.missing:  # not kept: a restored file counts on the next view
            self._cache.invalidate(("directions", layer_id, uri))
        return matrix

    # -- text pools: the mean embedding a prompt is centred on ---------------------------------
    def text_mean(self, session: Session, model_id: str) -> tuple[str, "np.ndarray"] | None:
        """(pool id, mean unit-length text embedding) of the pool most recently embedded for the
        model, or None when none is (or its blob is missing)."""
        from store.text_pools import latest_embedding

        found = latest_embedding(session, model_id)
        if found is None:
            return None
        pool_id, uri = found
        try:
            mean = self._get(("text-mean", uri), lambda: load_npy(self.blobs, uri).astype("float32").mean(axis=0), False)
        except MissingBlob:
            return None
        return pool_id, mean

    # -- word embeddings: (words x units) centred activations of rastered words -----------------
    def word_embedding(self, vectors_uri: str) -> "np.ndarray":
        """The raw (words x units) matrix; content-addressed, so cached without expiry.
        `MissingBlob` if the store has lost it (nothing is cached then, so a restored file counts)."""
        return self._get(("words", vectors_uri), lambda: load_npy(self.blobs, vectors_uri).astype("float32"), False)

    def word_vectors(self, vectors_uri: str) -> "np.ndarray":
        """Rows (words) normalised, for nearest words."""
        return self._get(("words-normalised", vectors_uri), lambda: normalise_rows(self.word_embedding(vectors_uri)), False)

    def unit_word_profiles(self, vectors_uri: str) -> UnitMatrix:
        """Each unit's activations over the word list (a column), normalised: for nearest units."""
        import numpy as np

        def load() -> UnitMatrix:
            matrix = self.word_embedding(vectors_uri)
            return UnitMatrix(np.arange(matrix.shape[1]), normalise_rows(matrix.T))

        return self._get(("word-profiles", vectors_uri), load, False)

    # -- sparse text decompositions as vectors over their texts ---------------------------------
    def decompositions(self, session: Session, layer_id: int) -> UnitMatrix | None:
        def load() -> UnitMatrix | None:
            import numpy as np

            rows = queries.layer_decompositions(session, layer_id)
            if not rows:
                return None
            texts = {text: i for i, text in enumerate(sorted({text for _, text, _ in rows}))}
            units = sorted({index for index, _, _ in rows})
            position = {index: i for i, index in enumerate(units)}
            matrix = np.zeros((len(units), len(texts)), dtype=np.float32)
            for index, text, coefficient in rows:
                matrix[position[index], texts[text]] += coefficient
            return UnitMatrix(np.array(units), normalise_rows(matrix))

        return self._get(("decompositions", layer_id), load, True)
