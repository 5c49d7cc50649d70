"""Crops map a layer's grid cell to the right input pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precompute.architectures import architecture
from precompute.crops import cell_box, coordinate_image, crop, crop_side, model_view


@pytest.mark.parametrize(("arch", "layer"), [("RN50x4", "layer4"), ("RN50x4", "layer2"), ("ViT-B-32", "transformer.resblocks.11.mlp"),
                                             ("toy-rn", "layer4"), ("toy-vit", "transformer.resblocks.5.mlp")])
def test_every_cell_box_contains_its_cell_and_stays_inside(arch, layer):
    spec = architecture(arch)
    layer_spec = spec.layer(layer)
    size = spec.image_size
    h, w = layer_spec.spatial
    side = crop_side(layer_spec, size)
    for position in range(h * w):
        left, top, right, bottom = cell_box(layer_spec, size, position)
        row, col = divmod(position, w)
        assert right - left == side and bottom - top == side
        assert 0 <= left and 0 <= top and right <= size and bottom <= size
        # The cell's own pixels lie inside the box.
        assert left <= col * size / w and (col + 1) * size / w <= right + 1e-9
        assert top <= row * size / h and (row + 1) * size / h <= bottom + 1e-9


def test_crop_of_a_coordinate_pattern_shows_the_mapped_pixels():
    spec = architecture("RN50x4")
    layer = spec.layer("layer4")  # 9 x 9 grid over 288 px: stride 32, crops 96 px
    view = coordinate_image(256)  # red = x, green = y; use the first 256 px of a 288 grid
    box = cell_box(layer, 288, 2 * 9 + 3)  # row 2, column 3: centre (112, 80)
    assert box == (64, 32, 160, 128)
    pixels = np.asarray(crop(view, box, size=96))
    assert pixels[0, 0, 0] == 64 and pixels[0, 0, 1] == 32
    assert pixels[-1, -1, 0] == 159 and pixels[-1, -1, 1] == 127


def test_corner_cells_shift_inwards_and_model_view_undoes_normalisation():
    spec = architecture("ViT-B-32")
    layer = spec.layer("transformer.resblocks.11.mlp")
    assert cell_box(layer, 224, 0) == (0, 0, 96, 96)
    assert cell_box(layer, 224, 48) == (128, 128, 224, 224)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    image = torch.rand(3, 8, 8)
    normalised = (image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    back = np.asarray(model_view(normalised, mean, std)).astype(int)
    np.testing.assert_allclose(back, (image.permute(1, 2, 0).numpy() * 255).round(), atol=1)


def test_model_view_rounds_exactly_as_torch_does():
    """Crops are content-addressed, so the model view must keep its exact pixels: here against
    the undo-normalisation written in torch, on values that land on every rounding case (halves
    included) and outside [0, 1]."""
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    halves = (torch.arange(0, 256, dtype=torch.float32) + 0.5) / 255  # k + 0.5 after * 255, give or take an ulp
    grid = torch.cat([halves, torch.linspace(-0.2, 1.2, 256 * 63)]).view(1, 128, 128).expand(3, 128, 128)
    noisy = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(0))
    for pixels in (grid, noisy):
        tensor = (pixels - mean_t) / std_t
        expected = (tensor * std_t + mean_t).clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(np.asarray(model_view(tensor, mean, std)), expected)
