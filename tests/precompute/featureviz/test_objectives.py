import pytest
import torch

from precompute.architectures import architecture
from precompute.capture import capture_with_grad
from precompute.errors import MicroscopeError
from precompute.featureviz.objectives import (Activations, FacetProbe, channel, direction, diversity, faceted, gram_cosines,
                                              neuron)

VIT = architecture("toy-vit")
RN = architecture("toy-rn")
VIT_LAYER = "transformer.resblocks.5.mlp"


def _vit_acts(batch=2, seed=0):
    layer = VIT.layer(VIT_LAYER)
    tokens = 1 + layer.spatial[0] * layer.spatial[1]
    return Activations({VIT_LAYER: torch.randn(batch, layer.units, tokens, generator=torch.Generator().manual_seed(seed))}, VIT)


def test_channel_is_the_mean_over_patch_tokens_without_the_class_token():
    acts = _vit_acts()
    raw = acts.raw(VIT_LAYER)
    raw[:, 7, 0] = 1000.0  # the class token must not count
    got = channel(VIT_LAYER, [7, 9])(acts)
    expected = torch.stack([raw[0, 7, 1:].mean(), raw[1, 9, 1:].mean()])
    torch.testing.assert_close(got, expected)


def test_neuron_reads_the_centre_patch_by_default():
    acts = _vit_acts()
    raw = acts.raw(VIT_LAYER)
    h, w = VIT.layer(VIT_LAYER).spatial
    centre_token = 1 + (h // 2) * w + w // 2
    torch.testing.assert_close(neuron(VIT_LAYER, 3)(acts), raw[:, 3, centre_token])
    torch.testing.assert_close(neuron(VIT_LAYER, 3, positions=[0, 5])(acts), torch.stack([raw[0, 3, 1], raw[1, 3, 6]]))


def test_neuron_on_a_layer_without_positions_is_refused():
    with pytest.raises(MicroscopeError, match="no positions"):
        neuron("attnpool", 0, spec=RN)


def test_objectives_add_and_scale_like_numbers():
    acts = _vit_acts()
    a, b = channel(VIT_LAYER, 1), channel(VIT_LAYER, 2)
    torch.testing.assert_close((a + 2 * b - 0.5 * a)(acts), 0.5 * a(acts) + 2 * b(acts))
    torch.testing.assert_close(sum([a, b])(acts), a(acts) + b(acts))
    torch.testing.assert_close((-a / 4 + 1)(acts), 1 - a(acts) / 4)
    assert set((a + diversity("transformer.resblocks.2.mlp", [0, 0])).layers) == {VIT_LAYER, "transformer.resblocks.2.mlp"}


def test_per_image_weights_switch_terms_off():
    acts = _vit_acts()
    got = channel(VIT_LAYER, 4, weight=[1.0, 0.0])(acts)
    assert got[1] == 0 and got[0] == acts.raw(VIT_LAYER)[0, 4, 1:].mean()


def test_direction_is_the_mean_dot_product():
    acts = _vit_acts()
    vector = torch.randn(VIT.layer(VIT_LAYER).units)
    expected = torch.einsum("bcp,c->bp", acts.raw(VIT_LAYER)[:, :, 1:], vector).mean(dim=1)
    torch.testing.assert_close(direction(VIT_LAYER, vector)(acts), expected)
    one_hot = torch.zeros_like(vector)
    one_hot[5] = 1
    torch.testing.assert_close(direction(VIT_LAYER, one_hot)(acts), channel(VIT_LAYER, 5)(acts))


def test_diversity_is_minus_the_gram_cosine_within_a_group():
    acts = _vit_acts(batch=4)
    cos = gram_cosines(acts.maps(VIT_LAYER))
    got = diversity(VIT_LAYER, [0, 0, 0, -1])(acts)
    # image 0: -(cos01 + cos02) / 3 members; image 3 belongs to no group
    torch.testing.assert_close(got[0], -(cos[0, 1] + cos[0, 2]) / 3)
    assert got[3] == 0
    same = Activations({VIT_LAYER: acts.raw(VIT_LAYER)[:1].expand(2, -1, -1)}, VIT)
    torch.testing.assert_close(diversity(VIT_LAYER, [0, 0])(same), torch.full((2,), -0.5))


def test_each_image_gets_the_gradient_of_its_own_objective_only(toy_rn):
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    objective = channel("layer4", [5, 6, 7])
    objective(Activations(capture_with_grad(toy_rn, images, ["layer4"]), RN)).sum().backward()
    batched = images.grad.clone()
    for b, unit in enumerate([5, 6, 7]):
        alone = images[b : b + 1].detach().clone().requires_grad_(True)
        channel("layer4", unit)(Activations(capture_with_grad(toy_rn, alone, ["layer4"]), RN)).sum().backward()
        torch.testing.assert_close(batched[b : b + 1], alone.grad, atol=1e-6, rtol=1e-4)


def test_faceted_adds_the_probe_on_the_lower_layer_filtered_by_the_gradients_positive_part(toy_rn):
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    captured = capture_with_grad(toy_rn, images, ["layer3", "layer4"], upstream=True)
    acts = Activations(captured, RN)
    strongest = captured["layer4"].detach().mean(dim=(2, 3)).argmax(dim=1).tolist()  # units alive on these images
    f = channel("layer4", strongest)
    w = torch.randn(RN.layer("layer3").units, generator=torch.Generator().manual_seed(2))
    got = faceted(f, "layer3", torch.stack([w, torch.zeros_like(w)]))(acts)
    g = captured["layer3"]
    (grad,) = torch.autograd.grad(f(acts).sum(), g, retain_graph=True)
    expected_term = (g * grad.clamp_min(0) * w[None, :, None, None]).sum(dim=(1, 2, 3))
    assert expected_term[0].abs() > 1e-3
    torch.testing.assert_close(got[0], f(acts)[0] + expected_term[0])
    torch.testing.assert_close(got[1], f(acts)[1])  # no probe: plain objective
    signed = faceted(f, "layer3", torch.stack([w, torch.zeros_like(w)]), positive=False)(acts)
    expected_signed = (g * grad * w[None, :, None, None]).sum(dim=(1, 2, 3))  # the article's exact form
    torch.testing.assert_close(signed[0], f(acts)[0] + expected_signed[0])
    assert not torch.isclose(signed[0], got[0])  # some of layer3 inhibits the units
    got.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_a_probes_direction_has_unit_root_mean_square_and_the_probes_signs():
    probe = FacetProbe("toy-rn", "layer3", "text", (3.0, -4.0, 0.0, 5.0), 7.0)
    got = probe.direction()
    # RMS of (3, -4, 0, 5) is sqrt(50 / 4)
    torch.testing.assert_close(got, torch.tensor([3.0, -4.0, 0.0, 5.0]) / (50 / 4) ** 0.5)
    torch.testing.assert_close(got.square().mean(), torch.tensor(1.0))
    zero = FacetProbe("toy-rn", "layer3", "text", (0.0, 0.0), 1.0)
    torch.testing.assert_close(zero.direction(), torch.zeros(2))


def test_upstream_capture_of_vit_tokens_gives_gradients_between_layers(toy_vit):
    images = torch.randn(1, 3, 64, 64, requires_grad=True)
    captured = capture_with_grad(toy_vit, images, ["transformer.resblocks.2.mlp", VIT_LAYER], upstream=True)
    value = captured[VIT_LAYER][:, 3, 1:].mean()
    (grad,) = torch.autograd.grad(value, captured["transformer.resblocks.2.mlp"])
    assert grad.abs().sum() > 0
    plain = capture_with_grad(toy_vit, images.detach(), [VIT_LAYER])
    torch.testing.assert_close(plain[VIT_LAYER], captured[VIT_LAYER].detach())
