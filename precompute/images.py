"""Decoding images from bytes, with the errors that mean "this file is not a usable image".

Kept free of torch so that registering a dataset (and failing fast on bad input) is light.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_image(data: bytes) -> Image.Image:
    """An RGB PIL image from encoded bytes, fully decoded (so truncation is caught here)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")
