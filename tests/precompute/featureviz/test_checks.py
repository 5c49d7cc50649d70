import numpy as np

from precompute.featureviz.checks import dominant_colour
from precompute.world import COLORS


def _patch(rgb, shades=np.linspace(0.45, 1.0, 32)):
    """A grey image with a square of `rgb` shaded from dark to full brightness."""
    image = np.full((64, 64, 3), 128, np.uint8)
    ramp = (np.asarray(rgb, np.float32)[None, :] * shades[:, None]).astype(np.uint8)
    image[16:48, 16:48] = ramp[:, None, :]
    return image


def test_a_shaded_colour_is_named_by_its_hue():
    # the darker half of a shaded red, green or purple square is nearer brown than its own
    # colour in RGB: the hue still names it
    for name in ("red", "green", "blue", "yellow", "purple", "pink", "orange"):
        assert dominant_colour(_patch(COLORS[name]), COLORS) == name


def test_brown_is_told_from_orange_by_brightness():
    assert dominant_colour(_patch(COLORS["brown"], np.linspace(0.9, 1.0, 32)), COLORS) == "brown"
    assert dominant_colour(_patch(COLORS["orange"], np.linspace(0.9, 1.0, 32)), COLORS) == "orange"


def test_a_grey_image_has_no_dominant_colour():
    assert dominant_colour(np.full((64, 64, 3), 128, np.uint8), COLORS) is None
