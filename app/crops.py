"""Crops around a unit's maximum, cut from the stored image when a page asks for one.

The examples job records each dataset example's crop box (precompute.crop_boxes) instead of
writing a PNG per (image, box); `/blobs/crop/{model}/{box}/{image}` (built by
`app.urls.Urls.crop`) cuts it from the model's view of the image, by the preprocess the store
records for the model, with the same functions the job used to write crops
(precompute.crops.crop_png), so the bytes are the same wherever and whenever it is cut.

A crop depends only on an immutable image, a model's preprocess and the box, so responses are
cached by browsers for a year and here in an LRU of PNG bytes; each model's transform is read
from the store once a minute at most. An image whose bytes are gone or do not decode, or a
model that is not registered, answers a placeholder (404, not cached), never a server error.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.cache import TTLCache
from app.paths import static_dir
from precompute.crop_boxes import CropBox
from store import queries
from store.blobs import BlobStore

log = logging.getLogger(__name__)



class CropMaker:
    def __init__(self, blobs: BlobStore, sessions: sessionmaker[Session], *, max_entries: int = 4096,
                 model_seconds: float = 60.0) -> None:
        self.blobs = blobs
        self.sessions = sessions
        self.pngs = TTLCache(None, max_entries)  # (model, box, image name) -> PNG bytes
        self.models = TTLCache(model_seconds, 256)  # model id -> (transform, preprocess cfg, image size) or None

    def _model(self, model_id: str) -> tuple[Any, dict, int] | None:
        def load() -> tuple[Any, dict, int] | None:
            with self.sessions() as session:
                row = queries.model_row(session, model_id)
            if row is None:
                return None
            from precompute.crops import view_transform

            cfg = dict(row["preprocess"] or {})
            return view_transform(cfg), cfg, int(row["image_size"])

        return self.models.get(("model", model_id), load)

    def png(self, model_id: str, box: CropBox, image_name: str) -> bytes | None:
        """The crop's PNG, or None when it cannot be cut (no such model or image, a box outside
        the model's input, an image that does not decode)."""
        model = self._model(model_id)
        if model is None or not box.fits(model[2]):
            return None
        key = (model_id, box, image_name)
        try:
            return self.pngs.get(key, lambda: self._cut(model, box, image_name))
        except _Uncuttable:
            return None

    def _cut(self, model: tuple[Any, dict, int], box: CropBox, image_name: str) -> bytes:
        from precompute.crops import crop_png
        from precompute.images import decode_image

        transform, cfg, _ = model
        try:
            image = decode_image(self.blobs.get(image_name))
            return crop_png(image, transform, cfg, box)
        except FileNotFoundError as error:  # MissingBlob
            raise _Uncuttable() from error
        except Exception as error:  # an image that does not decode, or a transform that fails on it
            log.warning("cannot cut crop %s of %s: %s", box.text(), image_name, error)
            raise _Uncuttable() from error


class _Uncuttable(Exception):
    pass


_lock = threading.Lock()


def crop_maker(state: Any) -> CropMaker:
    """The app's crop maker (`app.state.crops`), made on first use."""
    maker = getattr(state, "crops", None)
    if maker is None:
        with _lock:
            maker = getattr(state, "crops", None)
            if maker is None:
                maker = state.crops = CropMaker(state.blobs, state.sessionmaker)
    return maker


def placeholder() -> bytes:
    return (static_dir() / "missing-blob.svg").read_bytes()
