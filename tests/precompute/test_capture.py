import time

import numpy as np
import pytest
import torch

from precompute.capture import capture, capture_with_grad, split_tokens, unit_maxima
from precompute.errors import UnknownLayerError
from precompute.registry import load_model


@pytest.fixture(scope="module")
def towers(random_checkpoints):
    return {arch: load_model(arch.lower(), arch, checkpoint=path) for arch, path in random_checkpoints.items()}


@pytest.mark.parametrize("arch", ["RN50x4", "ViT-B-32"])
def test_every_layer_has_its_documented_shape(towers, arch):
    loaded = towers[arch]
    size = loaded.spec.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    activations = capture(loaded, images, loaded.spec.layer_names())
    for layer in loaded.spec.layers:
        assert tuple(activations[layer.name].shape) == layer.capture_shape(2), layer.name
        assert not activations[layer.name].requires_grad


def test_capture_matches_the_models_own_intermediates(towers):
    rn = towers["RN50x4"]
    images = torch.randn(2, 3, 288, 288, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        visual = rn.model.visual
        x = visual.layer3(visual.layer2(visual.layer1(visual.stem(images))))
        expected_layer4 = visual.layer4(x)
        expected_pool = visual.attnpool(expected_layer4)
    got = capture(rn, images, ["layer4", "attnpool"])
    torch.testing.assert_close(got["layer4"], expected_layer4)
    torch.testing.assert_close(got["attnpool"], expected_pool)

    vit = towers["ViT-B-32"]
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        features = vit.model.encode_image(images)
        final = capture(vit, images, "transformer.resblocks.11")["transformer.resblocks.11"]
        pooled = vit.model.visual.ln_post(final[:, :, 0]) @ vit.model.visual.proj
    torch.testing.assert_close(pooled, features, rtol=1e-4, atol=1e-4)


def test_token_layers_split_into_class_token_and_maps(towers):
    vit = towers["ViT-B-32"]
    layer = vit.spec.layer("transformer.resblocks.9.mlp")
    activation = capture(vit, torch.randn(3, 3, 224, 224), layer.name)[layer.name]
    cls, maps = split_tokens(activation, layer)
    assert cls.shape == (3, 3072) and maps.shape == (3, 3072, 7, 7)
    torch.testing.assert_close(maps[:, :, 0, 1], activation[:, :, 2])
    values, positions = unit_maxima(activation, layer)
    assert values.shape == positions.shape == (3, 3072)
    # The maximum over the 49 patch tokens (the class token, token 0, left out), and where it is.
    patches = activation[:, :, 1:].numpy()
    np.testing.assert_array_equal(values.numpy(), patches.max(axis=2))
    np.testing.assert_array_equal(positions.numpy(), patches.argmax(axis=2))
    # A hand-made case: unit 0 peaks at patch 5, unit 1 only in the class token (which does not count).
    tokens = torch.zeros(1, 2, 50)
    tokens[0, 0, 6] = 2.0
    tokens[0, 1, 0], tokens[0, 1, 49] = 9.0, 1.0
    values, positions = unit_maxima(tokens, layer)
    assert values.tolist() == [[2.0, 1.0]] and positions.tolist() == [[5, 48]]


def test_gradient_variant_reaches_the_pixels(towers):
    vit = towers["ViT-B-32"]
    images = torch.randn(1, 3, 224, 224, requires_grad=True)
    activation = capture_with_grad(vit, images, "transformer.resblocks.4.mlp")["transformer.resblocks.4.mlp"]
    activation[0, 17].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in vit.model.parameters())


def test_unknown_layer_is_rejected_before_any_work(towers):
    with pytest.raises(UnknownLayerError, match="valid layers"):
        capture(towers["RN50x4"], torch.randn(1, 3, 288, 288), ["layer4", "layer9"])


def test_capture_of_an_early_layer_stops_early(towers):
    rn = towers["RN50x4"]
    images = torch.randn(4, 3, 288, 288)
    capture(rn, images, "layer1")
    start = time.perf_counter()
    capture(rn, images, "layer1")
    early = time.perf_counter() - start
    start = time.perf_counter()
    capture(rn, images, "attnpool")
    full = time.perf_counter() - start
    assert early < full

