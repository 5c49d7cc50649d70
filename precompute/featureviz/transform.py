"""Transformation robustness (Lucid's `transform.standard_transforms`), scaled to the input size.

Lucid's published defaults, for a 224-pixel input: pad 12 (constant 0.5), jitter 8, random
scale 0.90 ... 1.10 (in steps of 0.02), random rotation -10 ... 10 degrees, jitter 4. Pixel
offsets scale with the model's input size (a 64-pixel toy model pads 3 and jitters 2 and 1);
scales and angles are unitless and stay. The chain is then resized to the input size.

Every image of a batch draws its own transformation, and the whole chain after the padding
is one affine resampling (`grid_sample`): jitter is a translation, scale and rotation act
about the centre, and the output grid has the model's input size, which is the resize.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

REFERENCE_SIZE = 224  # the input size Lucid's pixel defaults were chosen for


@dataclass(frozen=True)
class TransformSettings:
    pad: int = 12
    pad_value: float = 0.5
    jitter: int = 8
    scales: tuple[float, ...] = tuple(1 + (i - 5) / 50 for i in range(11))
    angles: tuple[float, ...] = tuple(float(a) for a in range(-10, 11))
    jitter_after: int = 4

    @classmethod
    def lucid(cls, input_size: int) -> TransformSettings:
        """Lucid's defaults with pixel offsets scaled from 224 to `input_size`."""
        factor = input_size / REFERENCE_SIZE

        def px(value: int) -> int:
            return max(1, round(value * factor))

        return cls(pad=px(12), jitter=px(8), jitter_after=px(4))

    @classmethod
    def none(cls) -> TransformSettings:
        return cls(pad=0, jitter=0, scales=(1.0,), angles=(0.0,), jitter_after=0)

    def describe(self) -> dict:
        out = asdict(self)
        out["scales"] = [round(s, 4) for s in self.scales]
        return out


class RandomTransform:
    """Draws and applies a transformation per image. Deterministic for a given generator."""

    def __init__(self, settings: TransformSettings, output_size: int) -> None:
        self.settings = settings
        self.output_size = output_size

    def matrices(self, batch: int, source_size: int, generator: torch.Generator) -> torch.Tensor:
        """(batch, 2, 3) affine matrices in normalised coordinates of the padded source."""
        s = self.settings
        draws = torch.rand(batch, 5, generator=generator)
        jitter_1 = torch.floor(draws[:, 0:2] * (2 * s.jitter + 1)) - s.jitter
        scale = torch.tensor(s.scales)[(draws[:, 2] * len(s.scales)).long().clamp(max=len(s.scales) - 1)]
        angle = torch.tensor(s.angles)[(draws[:, 3] * len(s.angles)).long().clamp(max=len(s.angles) - 1)]
        # A second jitter draw, independent of the first (its own pair of uniforms).
        extra = torch.rand(batch, 2, generator=generator)
        jitter_2 = torch.floor(extra * (2 * s.jitter_after + 1)) - s.jitter_after
        shift = (jitter_1 + jitter_2) * (2.0 / source_size)  # pixels -> normalised [-1, 1] units
        radians = angle * (math.pi / 180.0)
        cos, sin = torch.cos(radians) / scale, torch.sin(radians) / scale
        theta = torch.zeros(batch, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos, -sin, shift[:, 0]
        theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin, cos, shift[:, 1]
        # The unpadded image spans (size - 2 pad) / size of the padded source: sample a
        # window of that extent, so that without jitter, scale and rotation the output is
        # the image itself.
        extent = (source_size - 2 * s.pad) / source_size
        theta[:, :, :2] *= extent
        return theta

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        s = self.settings
        if s.pad:
            images = F.pad(images, (s.pad, s.pad, s.pad, s.pad), mode="constant", value=s.pad_value)
        batch, channels, size, _ = images.shape
        theta = self.matrices(batch, size, generator).to(images.device, images.dtype)
        grid = F.affine_grid(theta, [batch, channels, self.output_size, self.output_size], align_corners=False)
        # Outside the padded source (a large rotation at the corners) we keep the pad value.
        return F.grid_sample(images - s.pad_value, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False) + s.pad_value


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
