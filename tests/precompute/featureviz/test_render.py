import numpy as np
import pytest
import torch

from precompute.errors import MicroscopeError
from precompute.featureviz.objectives import FacetProbe
from precompute.featureviz.render import (
    RenderItem,
    RenderSettings,
    auto_batch_size,
    batches_of,
    lower_layer,
    redirect_activations,
    redirected_activation,
    redirected_relu,
    render,
    rgb_batch_to_model,
    unit_values,
)

FAST = RenderSettings(steps=24, batch_size=8)


def test_redirected_relu_passes_the_plain_gradient_where_it_exists():
    x = torch.tensor([[1.0, -1.0], [-1.0, -2.0]], requires_grad=True)
    grad_out = torch.tensor([[-1.0, -1.0], [-1.0, 1.0]])  # descent direction: raise where negative
    redirected_relu(x).backward(grad_out)
    # image 0 has a live input: the ordinary ReLU gradient; image 1 is dead: the gradient
    # that raises its negative inputs passes, the one that would lower them is stopped
    assert x.grad.tolist() == [[-1.0, 0.0], [-1.0, 0.0]]
    torch.testing.assert_close(redirected_relu(x), torch.relu(x))


def test_redirected_gelu_raises_a_unit_below_the_gelus_minimum():
    gelu = torch.nn.GELU()
    x = torch.tensor([[2.0, -3.0], [-3.0, -2.0]], requires_grad=True)
    grad_out = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])  # descent direction: raise every output
    redirected_activation(gelu)(x).backward(grad_out)
    plain = torch.autograd.functional.vjp(gelu, x.detach(), grad_out)[1]
    # image 0 has a positive input: GELU's own gradient, which lowers the input at -3 (below
    # its minimum GELU rises towards 0 as x falls); image 1 is dead: its inputs are raised
    torch.testing.assert_close(x.grad[0], plain[0])
    assert plain[1].gt(0).all() and x.grad[1].tolist() == [-1.0, -1.0]
    torch.testing.assert_close(redirected_activation(gelu)(x), gelu(x))


@pytest.mark.parametrize("model_fixture, activations", [("toy_vit", 6), ("toy_rn", 21)])
def test_redirect_activations_swaps_every_activation_and_restores_them(request, model_fixture, activations):
    """toy-vit's six MLP GELUs; toy-rn's 21 ReLUs (three in the stem, three in each of its six blocks)."""
    visual = request.getfixturevalue(model_fixture).model.visual
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = visual(images)
        with redirect_activations(visual) as count:
            during = visual(images)
        after = visual(images)
    assert count == activations
    torch.testing.assert_close(during, before)
    torch.testing.assert_close(after, before)
    assert all("forward" not in m.__dict__ for m in visual.modules())


def test_lower_layers():
    from precompute.architectures import architecture

    assert lower_layer(architecture("toy-rn"), "layer4") == "layer3"
    assert lower_layer(architecture("RN50x4"), "layer4") == "layer3"
    assert lower_layer(architecture("toy-vit"), "transformer.resblocks.5.mlp") == "transformer.resblocks.2.mlp"
    assert lower_layer(architecture("ViT-B-32"), "transformer.resblocks.11.mlp") == "transformer.resblocks.5.mlp"


def test_batches_keep_diversity_groups_whole():
    items = [RenderItem(1), *[RenderItem(2, "diversity", str(k)) for k in range(3)], RenderItem(3)]
    assert [len(b) for b in batches_of(items, 2)] == [1, 3, 1]
    assert [len(b) for b in batches_of(items, 4)] == [4, 1]


def test_rendering_is_seeded_and_reproducible_on_cpu(toy_rn):
    items = [RenderItem(5), RenderItem(6)]
    first = render(toy_rn, "layer4", items, RenderSettings(steps=6, batch_size=2))
    again = render(toy_rn, "layer4", items, RenderSettings(steps=6, batch_size=2))
    other = render(toy_rn, "layer4", items, RenderSettings(steps=6, batch_size=2, seed=1))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again))
    assert not np.array_equal(first[0].image, other[0].image)
    assert first[0].image.shape == (64, 64, 3) and first[0].image.dtype == np.uint8


def test_each_image_excites_its_own_unit_in_a_batch(toy_rn):
    units = [254, 365, 178, 506]
    results = render(toy_rn, "layer4", [RenderItem(u) for u in units], FAST)
    values = unit_values(toy_rn, "layer4", rgb_batch_to_model(toy_rn, np.stack([r.image for r in results])), units)
    # image i drives unit i more than the other images do
    assert all(values[i, i] > np.delete(values[:, i], i).max() for i in range(len(units)))
    for r, v in zip(results, np.diag(values)):
        assert r.final_activation == pytest.approx(float(v), rel=0.05, abs=0.05)  # 8-bit rounding only


def test_optimisation_raises_the_objective_over_the_start(toy_vit):
    layer = "transformer.resblocks.5.mlp"
    start = render(toy_vit, layer, [RenderItem(94), RenderItem(94, "neuron")], RenderSettings(steps=1, lr=1e-9, batch_size=2))
    done = render(toy_vit, layer, [RenderItem(94), RenderItem(94, "neuron")], RenderSettings(steps=24, batch_size=2))
    assert done[0].final_activation > start[0].final_activation + 0.5
    assert done[1].final_activation > start[1].final_activation + 0.5
    assert done[1].parameters["position"] == 4 * 8 + 4


def test_bad_items_are_refused_before_any_work(toy_rn):
    with pytest.raises(MicroscopeError, match="no unit 768"):
        render(toy_rn, "layer4", [RenderItem(768)], FAST)
    with pytest.raises(MicroscopeError, match="no positions"):
        render(toy_rn, "attnpool", [RenderItem(0, "neuron")], FAST)
    with pytest.raises(MicroscopeError, match="at least 1"):
        render(toy_rn, "layer4", [RenderItem(0)], RenderSettings(steps=0))
    with pytest.raises(MicroscopeError, match="no probe"):
        render(toy_rn, "layer4", [RenderItem(0, "facet", "text")], FAST)
    probe = FacetProbe("toy-vit", "layer3", "text", tuple([0.0] * 384), 0.0)
    with pytest.raises(MicroscopeError, match="trained on model 'toy-vit'"):
        render(toy_rn, "layer4", [RenderItem(0, "facet", "text")], FAST, probes={"text": probe})


def test_automatic_batch_size_fits_memory(toy_rn):
    size = auto_batch_size(toy_rn, ["layer4"], 64)
    assert 1 <= size <= 256


def test_the_job_knows_the_built_in_facets():
    from precompute.featureviz.facets import WORLD_FACETS

    assert WORLD_FACETS == ("text", "object")


def test_a_facet_image_depends_on_the_probes_direction_not_its_scale(toy_rn):
    weights = torch.randn(384, generator=torch.Generator().manual_seed(3))
    # Powers of two scale float32 exactly, so that the two directions are the same numbers.
    small = FacetProbe("toy-rn", "layer3", "text", tuple(float(v) for v in 0.25 * weights), 1.0)
    large = FacetProbe("toy-rn", "layer3", "text", tuple(float(v) for v in 8.0 * weights), -2.0)
    item = [RenderItem(5, "facet", "text")]
    a = render(toy_rn, "layer4", item, FAST, probes={"text": small})[0]
    b = render(toy_rn, "layer4", item, FAST, probes={"text": large})[0]
    np.testing.assert_array_equal(a.image, b.image)
