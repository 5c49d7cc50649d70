import numpy as np
import pytest
import torch

from precompute.featureviz.param import ImageParam, Normalise, fourier_image, pixel_image, rfft2d_freqs, to_uint8


def test_fourier_image_starts_near_grey_and_is_valid_rgb():
    images = fourier_image([1, 2, 3], 64)()
    assert images.shape == (3, 3, 64, 64)
    assert images.min() > 0 and images.max() < 1
    assert abs(images.mean().item() - 0.5) < 0.01 and images.std().item() < 0.05


def test_each_image_starts_from_its_own_seed_whatever_the_batch():
    alone = fourier_image([7], 32)()
    in_batch = fourier_image([3, 7, 9], 32)()
    torch.testing.assert_close(alone[0], in_batch[1])
    assert not torch.allclose(in_batch[0], in_batch[1])


def test_fourier_spectrum_is_scaled_by_one_over_frequency():
    param = ImageParam("fourier", [0], 64, decay=1.0)
    freqs = rfft2d_freqs(64, 64)
    scale = param.scale[0, 0, :, :, 0].numpy()
    assert scale.shape == freqs.shape == (64, 33)
    # 1/f, with the DC term (f = 0) clipped at 1/size as Lucid does.
    np.testing.assert_allclose(scale[0, 1], 64.0, rtol=1e-5)  # f = 1/64
    np.testing.assert_allclose(scale[0, 32], 2.0, rtol=1e-5)  # f = 1/2
    assert scale[0, 0] == pytest.approx(64.0)
    # so the starting image's energy sits in the low frequencies
    image = param.spatial()[0, 0]
    power = torch.fft.rfft2(image).abs() ** 2
    assert power[:4, :4].sum() > power[16:48, 16:].sum()


def test_pixel_image_is_plain_pixels_through_the_same_colour_map():
    param = pixel_image([5], 16, sd=0.01)
    assert param.values.shape == (1, 3, 16, 16)
    with torch.no_grad():
        param.values.zero_()
    torch.testing.assert_close(param(), torch.full((1, 3, 16, 16), 0.5))


def test_colour_decorrelation_mixes_channels():
    param = pixel_image([0], 4)
    with torch.no_grad():
        param.values.zero_()
        param.values[0, 0] = 2.0  # only the first decorrelated channel
    rgb = param()[0, :, 0, 0]
    assert (rgb > 0.5).all()  # the first component is a brightness direction: all three rise


def test_normalise_uses_the_models_own_record(toy_rn):
    norm = Normalise.of(toy_rn.preprocess_cfg)
    grey = torch.full((1, 3, 2, 2), 0.5)
    expected = (0.5 - torch.tensor(toy_rn.preprocess_cfg["mean"])) / torch.tensor(toy_rn.preprocess_cfg["std"])
    torch.testing.assert_close(norm(grey)[0, :, 0, 0], expected)
    other = Normalise([0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    torch.testing.assert_close(other(grey)[0, :, 0, 0], torch.tensor([0.8, 0.6, 0.4]))
    with pytest.raises(ValueError):
        Normalise.of({"size": 64})


def test_to_uint8_rounds_and_orders_channels_last():
    images = torch.zeros(1, 3, 2, 2)
    images[0, 0] = 1.0
    array = to_uint8(images)
    assert array.shape == (1, 2, 2, 3) and array.dtype == np.uint8
    assert array[0, 0, 0].tolist() == [255, 0, 0]
