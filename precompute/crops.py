"""The input region around a unit's spatial maximum, as shown beside a dataset example.

Coordinates are those of the model's input (after open_clip's resize and centre crop), so
the crop is cut from the "model view" of the image: the preprocessed tensor with the
normalisation undone, i.e. exactly the pixels the model saw, whatever the resize mode.

A layer's (h, w) grid covers the input with a stride of `image_size / h` pixels per cell.
The crop is centred on the cell's centre and is `crop_side` pixels wide: three strides
(the cell and its neighbours; the effective receptive field of a late layer spans a few
strides even when the theoretical one covers the whole image), at least a quarter of the
input so early layers show some context, and at most the whole input. Boxes are shifted,
not shrunk, to stay inside the image, so every crop of a layer has the same size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from precompute.architectures import LayerSpec

DEFAULT_CROP_SIZE = 128


def crop_side(layer: LayerSpec, image_size: int) -> int:
    if layer.spatial is None:
        return image_size
    stride = image_size / max(layer.spatial)
    return int(min(image_size, max(round(3 * stride), image_size // 4)))


def cell_box(layer: LayerSpec, image_size: int, flat_position: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) in model-input pixels of the region around grid cell
    `flat_position` (row-major in the layer's (h, w) grid)."""
    if layer.spatial is None:
        return (0, 0, image_size, image_size)
    h, w = layer.spatial
    if not 0 <= flat_position < h * w:
        raise ValueError(f"position {flat_position} outside the {h}x{w} grid of {layer.name}")
    row, col = divmod(int(flat_position), w)
    side = crop_side(layer, image_size)
    cx = (col + 0.5) * image_size / w
    cy = (row + 0.5) * image_size / h
    left = int(min(max(round(cx - side / 2), 0), image_size - side))
    top = int(min(max(round(cy - side / 2), 0), image_size - side))
    return (left, top, left + side, top + side)


def model_view(tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> Image.Image:
    """The preprocessed (3, S, S) tensor as the RGB image the model saw.

    Computed in numpy, in float32 like the model's input: on a tensor this small, torch's
    intra-op threads cost more in hand-offs than the arithmetic itself, badly so on a busy
    machine. Rounding is half to even, as torch rounds."""
    array = tensor.detach().float().cpu().numpy()
    mean_a = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    pixels = np.rint(np.clip(array * std_a + mean_a, 0.0, 1.0) * np.float32(255.0))
    return Image.fromarray(np.ascontiguousarray(pixels.astype(np.uint8).transpose(1, 2, 0)))


def crop(view: Image.Image, box: tuple[int, int, int, int], size: int = DEFAULT_CROP_SIZE) -> Image.Image:
    region = view.crop(box)
    if region.size != (size, size):
        region = region.resize((size, size), Image.Resampling.BICUBIC)
    return region


def png_bytes(image: Image.Image) -> bytes:
    """Deterministic PNG encoding (no timestamps or metadata), for content addressing."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=1)  # fast; crops are small
    return buffer.getvalue()


def coordinate_image(size: int) -> Image.Image:
    """A test pattern whose red channel is x and green channel is y (for size <= 256)."""
    ys, xs = np.mgrid[0:size, 0:size]
    pixels = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)
