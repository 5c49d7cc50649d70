"""The second-order lens against the authors' numbers, and each layer's effects against its whole
contribution computed by a separate path (the towers' own attention modules fed only that
layer's output, with the LayerNorms linearised at the image's own statistics)."""

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from precompute.errors import MicroscopeError
from precompute.lens import (
    ATTENTION_POOL,
    DIRECT,
    SECOND_ORDER,
    SECOND_ORDER_AND_DIRECT,
    LensError,
    layer_effects,
    lens_paths,
    neuron_effects,
    second_order_effects,
)
from precompute.registry import load_embedded
from precompute.world.dataset import generate_batch

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "second-order" / "vitb32_seed0_layer9.npz"
if not REFERENCE.is_file():  # worktrees live next to shared/; the main checkout one level up
    REFERENCE = Path("/work/shared/reference/second-order/vitb32_seed0_layer9.npz")


@pytest.fixture(scope="module")
def vitb32():
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-32", pretrained=None).eval()


@pytest.fixture(scope="module")
def toy_vit():
    return load_embedded("toy-vit")


@pytest.fixture(scope="module")
def toy_rn():
    return load_embedded("toy-rn")


def world_images(loaded, count: int = 6, seed: int = 3) -> torch.Tensor:
    pictures, _, _ = generate_batch(seed, 0, count)
    return torch.stack([loaded.preprocess(Image.fromarray(p)) for p in pictures])


def test_matches_the_authors_numbers_on_vitb32_layer9(vitb32):
    reference = np.load(REFERENCE)
    phi = second_order_effects(vitb32, torch.from_numpy(reference["x"]), "transformer.resblocks.9.mlp").numpy()
    expected = reference["phi"]
    assert phi.shape == expected.shape == (1, 3072, 512)
    relative = np.linalg.norm(phi - expected) / np.linalg.norm(expected)
    assert relative < 1e-4
    assert np.abs(phi - expected).max() < 1e-4 * np.abs(expected).max()
    assert list(np.argsort(-np.linalg.norm(phi[0], axis=-1))[:5]) == [333, 1170, 2906, 2829, 2053]


# -- the separate path: whole-layer contributions through the towers' own modules -------------------
def _record(visual, images, index):
    """Each block's residual input and LayerNorm output, the MLP output of block `index`, the
    final LayerNorm's input, and the embedding."""
    blocks = visual.transformer.resblocks
    seen = {"x": {}, "y": {}}
    handles = [blocks[index].mlp.register_forward_hook(lambda m, i, o: seen.__setitem__("m", o))]
    def keep(j):
        def hook(_module, inputs, output):
            seen["x"][j], seen["y"][j] = inputs[0], output
        return hook

    for j, block in enumerate(blocks):
        handles.append(block.ln_1.register_forward_hook(keep(j)))
    handles.append(visual.ln_post.register_forward_hook(lambda m, i, o: seen.__setitem__("post", i[0])))
    with torch.inference_mode():
        seen["rep"] = visual(images)
    for handle in handles:
        handle.remove()
    return seen


def _stats(x, eps):
    return x.mean(-1, keepdim=True), torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)


def _layer_contribution(visual, images, index, *, mean_pool: bool, second: bool = True, direct: bool = False):
    """The whole layer's contribution to the embedding, linearising every LayerNorm at the image's
    own statistics and giving the layer its share (one component of those adding into it) of each
    LayerNorm's mean and bias and of each later attention's biases."""
    seen = _record(visual, images, index)
    blocks = visual.transformer.resblocks
    depth = len(blocks)
    m = seen["m"]
    post_x = seen["post"]
    post_mu, post_s = _stats(post_x, visual.ln_post.eps)
    gamma_p, beta_p = visual.ln_post.weight, visual.ln_post.bias
    queries = slice(1, None) if mean_pool else slice(0, 1)
    total = torch.zeros_like(seen["rep"])
    with torch.inference_mode():
        if second:
            for later in range(index + 1, depth):
                block = blocks[later]
                parts = 1 + 2 * later
                mu, s = _stats(seen["x"][later], block.ln_1.eps)
                z = (m - mu / parts) * block.ln_1.weight / s + block.ln_1.bias / parts
                y = seen["y"][later]
                out = block.attn(y, y, z, need_weights=False)[0]
                biases = block.attn(y, y, torch.zeros_like(z), need_weights=False)[0]  # b_v W_O + b_O at every token
                out = out - (1 - 1 / parts) * biases
                spread = parts * (1 + 2 * depth)
                at_post = (out - post_mu / spread) * gamma_p / post_s + beta_p / spread
                total += at_post[:, queries].mean(dim=1) @ visual.proj
        if direct:
            spread = 1 + 2 * depth
            at_post = (m - post_mu / spread) * gamma_p / post_s + beta_p / spread
            total += at_post[:, queries].mean(dim=1) @ visual.proj
    return total * 100 / seen["rep"].norm(dim=-1, keepdim=True)


def test_a_class_token_layer_sums_to_its_whole_second_order_contribution(vitb32):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 224, 224)
    effects = neuron_effects(vitb32, images, "transformer.resblocks.8.mlp")
    assert effects.paths == SECOND_ORDER
    whole = _layer_contribution(vitb32.visual, images, 8, mean_pool=False)
    torch.testing.assert_close(effects.values.sum(dim=1), whole, rtol=1e-4, atol=1e-4 * whole.abs().max().item())
    # and neurons differ: the sum is not one neuron's effect repeated
    assert effects.values.std(dim=1).mean() > 1e-3 * effects.values.abs().mean()


@pytest.mark.parametrize("index", [1, 4])
def test_a_mean_pooled_layer_sums_to_its_second_order_and_direct_contributions(toy_vit, index):
    images = world_images(toy_vit)
    visual = toy_vit.model.visual
    effects = neuron_effects(toy_vit, images, f"transformer.resblocks.{index}.mlp")
    assert effects.paths == SECOND_ORDER_AND_DIRECT
    assert effects.values.shape == (len(images), 512, 128)
    whole = _layer_contribution(visual, images, index, mean_pool=True, direct=True)
    torch.testing.assert_close(effects.values.sum(dim=1), whole, rtol=1e-4, atol=1e-4 * whole.abs().max().item())
    # the second-order path alone is part of it, and differs from the whole
    second = second_order_effects(toy_vit, images, f"transformer.resblocks.{index}.mlp")
    only_second = _layer_contribution(visual, images, index, mean_pool=True)
    torch.testing.assert_close(second.sum(dim=1), only_second, rtol=1e-4, atol=1e-4 * only_second.abs().max().item())
    assert not torch.allclose(second, effects.values, atol=1e-3)


def test_the_last_mean_pooled_layer_has_only_the_direct_path(toy_vit):
    images = world_images(toy_vit)
    layer = "transformer.resblocks.5.mlp"
    effects = neuron_effects(toy_vit, images, layer)
    assert effects.paths == DIRECT
    whole = _layer_contribution(toy_vit.model.visual, images, 5, mean_pool=True, second=False, direct=True)
    torch.testing.assert_close(effects.values.sum(dim=1), whole, rtol=1e-4, atol=1e-4 * whole.abs().max().item())
    with pytest.raises(LensError, match="no second-order path"):
        second_order_effects(toy_vit, images, layer)


@pytest.fixture(scope="module")
def rn50x4():
    torch.manual_seed(0)
    return open_clip.create_model("RN50x4", pretrained=None).eval()


@pytest.mark.parametrize("arch", ["toy-rn", pytest.param("RN50x4", marks=pytest.mark.slow)])
def test_a_resnet_channel_is_a_fixed_vector_per_head_scaled_by_the_attention_weighted_activation(arch, request):
    if arch == "toy-rn":
        model = request.getfixturevalue("toy_rn")
        images, shape = world_images(model), (6, 768, 128)
    else:
        model = request.getfixturevalue("rn50x4")
        torch.manual_seed(2)
        images, shape = torch.randn(1, 3, 288, 288), (1, 2560, 640)
    visual = model.visual if arch != "toy-rn" else model.model.visual
    effects = neuron_effects(model, images, "layer4")
    assert effects.paths == ATTENTION_POOL
    assert effects.values.shape == shape
    # the channels' effects plus what the pool adds of its own (positional embeddings and
    # biases, through the same attention weights) are the embedding
    seen = {}
    handle = visual.attnpool.register_forward_pre_hook(lambda m, i: seen.__setitem__("x", i[0]))
    with torch.inference_mode():
        rep = visual(images)
    handle.remove()
    pool = visual.attnpool
    x = seen["x"].flatten(2).permute(2, 0, 1)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + pool.positional_embedding[:, None]
    own, _ = F.multi_head_attention_forward(
        query=x, key=x, value=pool.positional_embedding[:, None].expand_as(x), embed_dim_to_check=x.shape[-1],
        num_heads=pool.num_heads, q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight, in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), bias_k=None, bias_v=None,
        add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False)
    channels = effects.values.sum(dim=1) * rep.norm(dim=-1, keepdim=True) / 100
    torch.testing.assert_close(channels + own[0], rep, rtol=1e-4, atol=1e-4 * rep.abs().max().item())
    # a silent channel has no effect
    silent = (seen["x"].flatten(2).amax(dim=2) == 0)
    assert silent.any() or arch != "toy-rn"
    assert not silent.any() or effects.values[silent].abs().max() == 0
    last = len(visual.layer4) - 1
    assert lens_paths(model, f"layer4.{last}") == ATTENTION_POOL  # the last block is the same tensor


def test_a_small_memory_budget_gives_the_same_effects(toy_vit, toy_rn):
    for loaded, layer in ((toy_vit, "transformer.resblocks.3.mlp"), (toy_rn, "layer4")):
        images = world_images(loaded, count=3)
        roomy = neuron_effects(loaded, images, layer).values
        tight = neuron_effects(loaded, images, layer, memory_budget=200_000).values
        torch.testing.assert_close(tight, roomy, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("arch", "layer", "why"), [
    ("toy-rn", "layer3", "final stage"),
    ("toy-rn", "attnpool", "final stage"),
    ("toy-vit", "transformer.resblocks.2", "MLP layers"),
    ("toy-vit", "transformer.resblocks.6.mlp", "6 blocks"),
])
def test_layers_the_lens_cannot_serve_are_refused_with_a_reason(arch, layer, why, toy_vit, toy_rn):
    loaded = toy_vit if arch == "toy-vit" else toy_rn
    with pytest.raises(MicroscopeError, match=why):
        neuron_effects(loaded, world_images(loaded, count=1), layer)


def test_the_last_layer_of_a_class_token_tower_is_refused(vitb32):
    with pytest.raises(LensError, match="no later attention heads"):
        lens_paths(vitb32, "transformer.resblocks.11.mlp")
    assert lens_paths(vitb32, "transformer.resblocks.10.mlp") == SECOND_ORDER


def test_one_forward_pass_for_several_layers_gives_each_layer_its_own_effects(toy_vit):
    images = world_images(toy_vit, count=3)
    layers = [f"transformer.resblocks.{i}.mlp" for i in range(6)]
    together = layer_effects(toy_vit, images, layers)
    assert list(together) == layers
    for layer in layers:
        alone = neuron_effects(toy_vit, images, layer)
        assert together[layer].paths == alone.paths
        torch.testing.assert_close(together[layer].values, alone.values, rtol=1e-5, atol=1e-6)
