"""Attack rendering, pixel cover, label sets, zero-shot and the ablation hook, on the toy models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from precompute.errors import Problem
from precompute.typographic import (
    EIGHT_POSITIONS, MAX_TEXT_CHARS, Placement, best_target, changed_units, encode_with_layer, fixed_placements,
    pixel_cover, render_attack, silenced, success_rate,
)
from precompute.zeroshot import TextFeatureCache, classify, label_set, top_classes


def grey(size: int = 64) -> Image.Image:
    return Image.new("RGB", (size, size), (128, 128, 128))


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    return (np.asarray(before) != np.asarray(after)).any(-1)


def test_pixel_cover_counts_changed_pixels():
    before = grey(10)
    after = before.copy()
    for x in range(7):
        after.putpixel((x, 3), (129, 128, 128))  # changed by the smallest amount still counts
    assert pixel_cover(before, before) == 0.0
    assert pixel_cover(before, after) == pytest.approx(7 / 100)


def test_fixed_setup_small_and_large_pictures():
    small = render_attack(grey(64), "square")
    mask = changed(grey(64), small.image)
    assert small.pixel_cover == pytest.approx(mask.mean())
    assert 0.02 < small.pixel_cover < 0.12
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - 32) < 4 and abs(ys.mean() - 32) < 4  # one copy, at the centre
    assert len(fixed_placements(288, 288)) == len(EIGHT_POSITIONS) == 8
    large = render_attack(grey(288), "pizza")
    big_mask = changed(grey(288), large.image)
    for x, y in EIGHT_POSITIONS:  # ink around each of the eight coordinates
        cx, cy = round(x * 288), round(y * 288)
        assert big_mask[max(cy - 6, 0):cy + 6, max(cx - 20, 0):cx + 20].any()
    assert 0.03 < large.pixel_cover < 0.2


def test_user_placement_position_colour_rotation():
    base = grey(100)
    left = render_attack(base, "abc", [Placement(x=0.2, y=0.5, size=0.2, color="#ff0000", outline=None)])
    mask = changed(base, left.image)
    assert mask[:, :40].any() and not mask[:, 60:].any()
    pixels = np.asarray(left.image)[mask]
    assert (pixels[:, 0] > pixels[:, 1]).mean() > 0.9  # red ink
    flat = changed(base, render_attack(base, "wide text", [Placement(size=0.12, outline=None)]).image)
    turned = changed(base, render_attack(base, "wide text", [Placement(size=0.12, outline=None, rotation=90)]).image)
    assert np.ptp(np.nonzero(flat)[1]) > np.ptp(np.nonzero(flat)[0])  # wider than tall
    assert np.ptp(np.nonzero(turned)[0]) > np.ptp(np.nonzero(turned)[1])  # taller than wide
    bigger = render_attack(base, "abc", [Placement(size=0.4)]).pixel_cover
    assert bigger > render_attack(base, "abc", [Placement(size=0.2)]).pixel_cover


@pytest.mark.parametrize(
    "text,placement,reason",
    [
        ("", Placement(), "empty-text"),
        ("   ", Placement(), "empty-text"),
        ("x" * (MAX_TEXT_CHARS + 1), Placement(), "text-too-long"),
        ("ok", Placement(x=1.2), "position-outside-image"),
        ("ok", Placement(y=-0.1), "position-outside-image"),
        ("ok", Placement(color="notacolour"), "bad-color"),
        ("ok", Placement(size=0), "bad-size"),
    ],
)
def test_bad_attacks_are_refused(text, placement, reason):
    with pytest.raises(Problem) as caught:
        render_attack(grey(), text, [placement])
    assert caught.value.status == 422 and caught.value.reason == reason


def test_label_sets():
    assert label_set("world-shapes").names == ("circle", "square", "triangle", "star", "cross", "heart")
    assert len(label_set("world").names) == 48 and len(label_set("world-colors").names) == 8
    assert len(label_set("imagenet").names) == 1000
    user = label_set(labels=[" cat ", "dog"])
    assert user.names == ("cat", "dog") and user.user and user.id == label_set(labels=["cat", "dog"]).id
    for kwargs, reason in (({"labels": ["cat"]}, "too-few-labels"), ({"labels": ["cat", "Cat"]}, "repeated-label"),
                           ({"labels": ["cat", ""]}, "empty-label"), ({"spec": "nope"}, "unknown-label-set")):
        with pytest.raises(Problem) as caught:
            label_set(**kwargs)
        assert caught.value.status == 422 and caught.value.reason == reason


def test_success_rate_excludes_pictures_already_of_the_target():
    clean = torch.tensor([0, 1, 2, 2, 3])
    attacked = torch.tensor([2, 2, 2, 0, 2])
    outcome = success_rate(clean, attacked, 2)
    assert outcome.counted == 3 and outcome.success == pytest.approx(1.0)
    assert success_rate(torch.tensor([1, 1]), torch.tensor([1, 1]), 1).success is None
    assert best_target(clean, attacked, 4).target == 2
    assert changed_units(torch.tensor([1.0, 5.0, 0.0]), torch.tensor([4.0, 5.0, 1.0]), 2) == [0, 2]


@pytest.fixture(scope="module")
def held_out():
    from precompute.world import COLORS, SHAPES, object_image

    rng = np.random.default_rng([5, 22])
    images, labels = [], []
    for i in range(48):
        images.append(object_image(SHAPES[i % 6], list(COLORS)[i % 8], 1, rng).image)
        labels.append(i % 6)
    return images, torch.tensor(labels)


def test_zero_shot_world_shapes_and_user_labels(toy_rn, held_out):
    images, labels = held_out
    cache = TextFeatureCache()
    shapes = label_set("world-shapes")
    probs = classify(toy_rn, images, shapes, cache=cache)
    assert probs.shape == (48, 6) and torch.allclose(probs.sum(1), torch.ones(48), atol=1e-4)
    assert (probs.argmax(1) == labels).float().mean() > 0.9
    classify(toy_rn, images[:2], shapes, cache=cache)
    assert cache.builds == 1  # the class embeddings are built once per (model, label set)
    user = label_set(labels=["circle", "square"])
    circles = [im for im, l in zip(images, labels) if l == 0]
    assert (classify(toy_rn, circles, user, cache=cache).argmax(1) == 0).float().mean() > 0.8
    assert cache.builds == 2
    assert top_classes(shapes, probs[0], 3)[0]["label"] == "circle"
    with pytest.raises(Problem) as caught:
        classify(toy_rn, images[:1], label_set(labels=["circle", "zeppelin"]), cache=cache)
    assert caught.value.reason == "unknown-words"


def test_attack_works_and_silencing_is_a_real_hook(toy_rn, held_out):
    images, labels = held_out
    shapes = label_set("world-shapes")
    square = shapes.index("square")
    keep = [i for i in range(len(images)) if int(labels[i]) != square]
    attacked = [render_attack(images[i], "square").image for i in keep]
    clean_top = classify(toy_rn, [images[i] for i in keep], shapes).argmax(1)
    assert success_rate(clean_top, classify(toy_rn, attacked, shapes).argmax(1), square).success >= 0.5

    pixels = torch.stack([toy_rn.preprocess(im) for im in attacked[:4]])
    features, values = encode_with_layer(toy_rn, pixels, "layer4")
    assert values.shape == (4, toy_rn.spec.layer("layer4").units)
    with torch.inference_mode():
        reference = torch.nn.functional.normalize(toy_rn.model.encode_image(pixels).float(), dim=-1)
    assert torch.allclose(features, reference, atol=1e-5)
    top = changed_units(values[0] * 0, values[0], 5)
    quiet_features, quiet_values = encode_with_layer(toy_rn, pixels, "layer4", silence=top)
    assert torch.all(quiet_values[:, top] == 0) and not torch.allclose(quiet_features, features)
    with silenced(toy_rn, "layer4", top), torch.inference_mode():  # the hook alone, and it is removed after
        assert not torch.allclose(torch.nn.functional.normalize(toy_rn.model.encode_image(pixels).float(), dim=-1), features)
    with torch.inference_mode():
        assert torch.allclose(torch.nn.functional.normalize(toy_rn.model.encode_image(pixels).float(), dim=-1), features, atol=1e-5)
