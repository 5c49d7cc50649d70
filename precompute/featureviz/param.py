"""Image parameterisations (Lucid's `param`): what the optimiser actually changes.

`fourier_image` (the default) keeps each image as the real FFT of its pixels, scaled by
1/f**decay so that every frequency moves at the same rate in pixel space: low frequencies
dominate and the optimisation does not fill the image with high-frequency noise. Both
parameterisations map through Lucid's colour decorrelation (the square root of ImageNet's
colour correlation, as Lucid ships it) and a sigmoid, so an image is always valid RGB in
[0, 1]. `Normalise` then applies the model's own preprocessing mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

# Lucid's `color_correlation_svd_sqrt`, normalised by its largest row norm.
_COLOR_CORRELATION_SVD_SQRT = np.asarray(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)
_COLOR_CORRELATION = _COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(_COLOR_CORRELATION_SVD_SQRT, axis=0))


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """The frequency of every entry of a real 2-D FFT of an h x w image (Lucid's helper)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 1]  # the columns torch.fft.irfft2 expects
    return np.sqrt(fx * fx + fy * fy)


def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
    out = []
    for seed in seeds:
        generator = torch.Generator()
        generator.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
        out.append(generator)
    return out


class ImageParam(nn.Module):
    """A batch of images as parameters; calling it gives (batch, 3, size, size) RGB in [0, 1].

    Each image's starting point comes from its own seed, so an image starts the same
    whatever batch it is rendered in.
    """

    def __init__(self, kind: str, seeds: Sequence[int], size: int, *, sd: float = 0.01, decay: float = 1.0,
                 decorrelate: bool = True) -> None:
        super().__init__()
        if kind not in ("fourier", "pixel"):
            raise ValueError(f"unknown parameterisation '{kind}' (fourier or pixel)")
        if size < 2:
            raise ValueError("image size must be at least 2")
        self.kind, self.size, self.sd, self.decay, self.decorrelate = kind, size, sd, decay, decorrelate
        gens = _generators(seeds)
        if kind == "fourier":
            freqs = rfft2d_freqs(size, size)
            scale = 1.0 / np.maximum(freqs, 1.0 / size) ** decay
            self.register_buffer("scale", torch.from_numpy(scale.astype(np.float32))[None, None, :, :, None])
            shape = (3, *freqs.shape, 2)
        else:
            shape = (3, size, size)
        init = torch.stack([torch.randn(shape, generator=g) for g in gens]) * sd
        self.values = nn.Parameter(init)
        self.register_buffer("color", torch.from_numpy(_COLOR_CORRELATION.copy()))

    @property
    def batch(self) -> int:
        return self.values.shape[0]

    def spatial(self) -> torch.Tensor:
        """The pre-sigmoid image (batch, 3, size, size) in decorrelated colour space."""
        if self.kind == "fourier":
            spectrum = torch.view_as_complex((self.scale * self.values).contiguous())
            image = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho")
            return image / 4.0  # Lucid's magic constant: keeps the start near grey
        return self.values

    def forward(self) -> torch.Tensor:
        image = self.spatial()
        if self.decorrelate:
            image = torch.einsum("bchw,dc->bdhw", image, self.color)
        return torch.sigmoid(image)

    def describe(self) -> dict:
        return {"param": self.kind, "sd": self.sd, "decay": self.decay if self.kind == "fourier" else None,
                "decorrelate": self.decorrelate}


def fourier_image(seeds: Sequence[int], size: int, *, sd: float = 0.01, decay: float = 1.0) -> ImageParam:
    return ImageParam("fourier", seeds, size, sd=sd, decay=decay)


def pixel_image(seeds: Sequence[int], size: int, *, sd: float = 0.01) -> ImageParam:
    return ImageParam("pixel", seeds, size, sd=sd)


class Normalise(nn.Module):
    """The model's input normalisation, from its preprocessing record (`LoadedModel.preprocess_cfg`)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError("mean and std need three channels, std positive")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32)[None, :, None, None])
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32)[None, :, None, None])

    @classmethod
    def of(cls, preprocess_cfg: dict) -> Normalise:
        if "mean" not in preprocess_cfg or "std" not in preprocess_cfg:
            raise ValueError("the model's preprocessing record has no mean/std")
        return cls(preprocess_cfg["mean"], preprocess_cfg["std"])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(batch, 3, h, w) in [0, 1] -> (batch, h, w, 3) uint8."""
    array = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return (array * 255.0 + 0.5).astype(np.uint8)
