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

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from precompute.architectures import LayerSpec
from precompute.crop_boxes import CropBox, grid_box
from precompute.crop_boxes import crop_side as _crop_side

DEFAULT_CROP_SIZE = 128


def crop_side(layer: LayerSpec, image_size: int) -> int:
    return _crop_side(layer.spatial, image_size)


def cell_box(layer: LayerSpec, image_size: int, flat_position: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) in model-input pixels of the region around grid cell
    `flat_position` (row-major in the layer's (h, w) grid)."""
    try:
        return grid_box(layer.spatial, image_size, flat_position)
    except ValueError:
        h, w = layer.spatial
        raise ValueError(f"position {flat_position} outside the {h}x{w} grid of {layer.name}") from None


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


def view_transform(preprocess_cfg: dict) -> Callable[[Image.Image], torch.Tensor]:
    """The model's eval transform from the preprocess settings a store records for it
    (`size`, `mean`, `std`, `interpolation`, `resize_mode`): what the model saw, rebuilt
    without loading the model."""
    import open_clip

    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in preprocess_cfg.items()}
    return open_clip.transform.image_transform_v2(open_clip.transform.PreprocessCfg(**cfg), is_train=False)


def crop_png(image: Image.Image, transform: Callable[[Image.Image], torch.Tensor], preprocess_cfg: dict, box: CropBox) -> bytes:
    """The PNG of the crop `box` of `image` as the model saw it (`transform`, its eval
    preprocess): the same bytes whenever and wherever it is cut."""
    view = model_view(transform(image), preprocess_cfg.get("mean", (0.0, 0.0, 0.0)), preprocess_cfg.get("std", (1.0, 1.0, 1.0)))
    return png_bytes(crop(view, box.box, box.size))


def coordinate_image(size: int) -> Image.Image:
    """A test pattern whose red channel is x and green channel is y (for size <= 256)."""
    ys, xs = np.mgrid[0:size, 0:size]
    pixels = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)
