"""Where the crop around a unit's spatial maximum lies, without torch: what a dataset example
records and what a crop URL names, so the web server can cut the crop when a page asks for it.

A crop is named by its box in model-input pixels and the side it is shown at:
`CropBox(left, top, right, bottom, size)`, written `"left,top,right,bottom,size"` in the
store (`dataset_examples.crop_box`) and in URLs. The box rule is `precompute.crops`'s (the
cell and its neighbours, see there); the pixels are cut by `precompute.crops.crop_png`.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_CROP_SIZE = 1024  # the largest side a crop is served at


def crop_side(spatial: tuple[int, int] | None, image_size: int) -> int:
    if spatial is None:
        return image_size
    stride = image_size / max(spatial)
    return int(min(image_size, max(round(3 * stride), image_size // 4)))


def grid_box(spatial: tuple[int, int] | None, image_size: int, flat_position: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) in model-input pixels of the region around grid cell
    `flat_position` (row-major in the (h, w) grid `spatial`); the whole input when None."""
    if spatial is None:
        return (0, 0, image_size, image_size)
    h, w = spatial
    if not 0 <= flat_position < h * w:
        raise ValueError(f"position {flat_position} outside the {h}x{w} grid")
    row, col = divmod(int(flat_position), w)
    side = crop_side(spatial, image_size)
    cx = (col + 0.5) * image_size / w
    cy = (row + 0.5) * image_size / h
    left = int(min(max(round(cx - side / 2), 0), image_size - side))
    top = int(min(max(round(cy - side / 2), 0), image_size - side))
    return (left, top, left + side, top + side)


@dataclass(frozen=True)
class CropBox:
    left: int
    top: int
    right: int
    bottom: int
    size: int  # side in pixels of the crop as served

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.right, self.bottom)

    def text(self) -> str:
        return f"{self.left},{self.top},{self.right},{self.bottom},{self.size}"

    @classmethod
    def parse(cls, text: str) -> CropBox:
        """The crop box written by `text()`; ValueError for anything else."""
        parts = text.split(",")
        if len(parts) != 5 or not all(p.isdigit() and len(p) <= 5 for p in parts):
            raise ValueError(f"not a crop box 'left,top,right,bottom,size': {text!r}")
        crop = cls(*(int(p) for p in parts))
        if not (crop.left < crop.right and crop.top < crop.bottom and 1 <= crop.size <= MAX_CROP_SIZE):
            raise ValueError(f"an empty crop box or a size outside 1..{MAX_CROP_SIZE}: {text!r}")
        return crop

    def fits(self, image_size: int) -> bool:
        """Whether the box lies inside a model input of `image_size` pixels."""
        return self.right <= image_size and self.bottom <= image_size
