import torch

from precompute.featureviz.transform import RandomTransform, TransformSettings


def test_lucid_defaults_at_224_and_scaled_for_a_64_pixel_model():
    full = TransformSettings.lucid(224)
    assert (full.pad, full.jitter, full.jitter_after, full.pad_value) == (12, 8, 4, 0.5)
    assert min(full.scales) == 0.9 and max(full.scales) == 1.1 and len(full.scales) == 11
    assert full.angles[0] == -10 and full.angles[-1] == 10
    toy = TransformSettings.lucid(64)
    assert (toy.pad, toy.jitter, toy.jitter_after) == (3, 2, 1)
    assert toy.scales == full.scales and toy.angles == full.angles
    big = TransformSettings.lucid(288)
    assert (big.pad, big.jitter, big.jitter_after) == (15, 10, 5)


def test_no_transform_is_the_identity():
    images = torch.rand(2, 3, 16, 16)
    out = RandomTransform(TransformSettings.none(), 16)(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_padding_alone_keeps_the_image():
    settings = TransformSettings(pad=3, jitter=0, scales=(1.0,), angles=(0.0,), jitter_after=0)
    images = torch.rand(1, 3, 20, 20)
    out = RandomTransform(settings, 20)(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_transforms_are_drawn_per_image_resized_and_reproducible():
    settings = TransformSettings.lucid(64)
    transform = RandomTransform(settings, 48)
    image = torch.rand(1, 3, 64, 64).expand(4, -1, -1, -1)
    first = transform(image, torch.Generator().manual_seed(3))
    again = transform(image, torch.Generator().manual_seed(3))
    assert first.shape == (4, 3, 48, 48)
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first[0], first[1])  # the same image, transformed differently


def test_jitter_moves_by_whole_pixels_within_its_range():
    settings = TransformSettings(pad=0, jitter=2, scales=(1.0,), angles=(0.0,), jitter_after=0)
    transform = RandomTransform(settings, 32)
    theta = transform.matrices(500, 32, torch.Generator().manual_seed(0))
    shifts = theta[:, :, 2] * 32 / 2
    assert set(torch.round(shifts).unique().tolist()) == {-2.0, -1.0, 0.0, 1.0, 2.0}
