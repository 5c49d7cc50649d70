"""Concept discovery, segmentation, ablations, spurious cues and maximal text (precompute.discovery):
the arithmetic on small hand-made layers whose answers are worked out here, and the live parts
on the shipped toy models."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from precompute.discovery import (
    Ablation,
    LayerKnowledge,
    ablated,
    aligned_neurons,
    dense_coefficients,
    discover_concepts,
    discover_concepts_in_layers,
    discover_concepts_over_layers,
    iou,
    maximal_text,
    on_common_texts,
    read,
    segment,
    spurious_cues,
)
from precompute.errors import Problem


def _layer(coefficients, thresholds, mean=None, directions=None, texts=("red", "square", "dog", "blue")):
    n = len(thresholds)
    d = 3
    directions = np.asarray(directions if directions is not None else np.eye(n, d), dtype=np.float32)
    mean = np.asarray(mean if mean is not None else np.zeros((n, d)), dtype=np.float32)
    return LayerKnowledge("L", np.arange(n, dtype=np.int64), directions, mean, np.asarray(thresholds, np.float32),
                          tuple(texts), np.asarray(coefficients, np.float32))


def test_concepts_sum_coefficients_weighted_by_norms_of_the_active_neurons():
    # neuron 0: effect (3, 4, 0) - mean (0, 0, 0) -> norm 5 > 1: active
    # neuron 1: effect (1, 1, 1) - mean (1, 1, 1) -> norm 0: inactive
    # neuron 2: effect (0, 0, 2) -> norm 2 > 1.5: active
    coefficients = [[1.0, 0.0, 0.5, 0.0],
                     [9.0, 9.0, 9.0, 9.0],
                     [0.0, 2.0, -1.0, 0.0]]
    layer = _layer(coefficients, [1.0, 1.0, 1.5], mean=[[0, 0, 0], [1, 1, 1], [0, 0, 0]])
    effects = np.array([[3, 4, 0], [1, 1, 1], [0, 0, 2]], dtype=np.float32)
    result = discover_concepts(layer, effects, top=10)
    assert [a["unit"] for a in result.active] == [0, 2]
    # red: 1 * 5 = 5; square: 2 * 2 = 4; dog: 0.5 * 5 - 1 * 2 = 0.5; blue: 0 (not listed)
    assert [(c.text, round(c.score, 5)) for c in result.concepts] == [("red", 5.0), ("square", 4.0), ("dog", 0.5)]
    dog = result.concepts[2]
    assert [(n["unit"], round(n["contribution"], 5)) for n in dog.neurons] == [(0, 2.5), (2, -2.0)]


def test_no_active_neuron_no_concepts():
    layer = _layer([[1, 0, 0, 0]], [10.0], directions=[[1, 0, 0]])
    result = discover_concepts(layer, np.array([[1.0, 0, 0]]))
    assert result.active == [] and result.concepts == []


def test_concepts_add_up_over_layers_and_name_each_neurons_layer():
    # layer A: neuron 0 active with norm 5 (red 1, dog 0.5); neuron 1 inactive.
    # layer B (its own texts): neuron 0 active with norm 2 (square 2, dog -1); neuron 1 with norm 4 (dog 1).
    a = LayerKnowledge("A", np.arange(2), np.eye(2, 3, dtype=np.float32), np.zeros((2, 3), np.float32),
                       np.array([1.0, 1.0], np.float32), ("dog", "red"), np.array([[0.5, 1.0], [9.0, 9.0]], np.float32))
    b = LayerKnowledge("B", np.array([7, 9]), np.eye(2, 3, dtype=np.float32), np.zeros((2, 3), np.float32),
                       np.array([1.5, 1.0], np.float32), ("dog", "square"), np.array([[-1.0, 2.0], [1.0, 0.0]], np.float32))
    a2, b2 = on_common_texts([a, b])
    assert a2.texts == b2.texts == ("dog", "red", "square")
    assert a2.coefficients.tolist() == [[0.5, 1.0, 0.0], [9.0, 9.0, 0.0]] and b2.coefficients.tolist() == [[-1.0, 0.0, 2.0], [1.0, 0.0, 0.0]]
    effects = {"A": np.array([[3, 4, 0], [0, 0, 0]], np.float32), "B": np.array([[0, 0, 2], [0, 4, 0]], np.float32)}
    result = discover_concepts_in_layers([a2, b2], effects, top=10)
    assert result.layers == ("A", "B") and result.layer == "B"
    assert [(n["layer"], n["unit"]) for n in result.active] == [("A", 0), ("B", 9), ("B", 7)]  # norms 5, 4, 2
    # red: 1 * 5 = 5; dog: 0.5 * 5 + 1 * 4 - 1 * 2 = 4.5; square: 2 * 2 = 4
    assert [(c.text, round(c.score, 5)) for c in result.concepts] == [("red", 5.0), ("dog", 4.5), ("square", 4.0)]
    assert [(n["layer"], n["unit"], round(n["contribution"], 5)) for n in result.concepts[1].neurons] == [
        ("B", 9, 4.0), ("A", 0, 2.5), ("B", 7, -2.0)]
    over = discover_concepts_over_layers([a2, b2], effects)
    assert [c.text for c in result.concepts] == [t for t, _ in over]
    assert [c.score for c in result.concepts] == pytest.approx([v for _, v in over])
    with pytest.raises(ValueError):
        discover_concepts_in_layers([a, b], effects)  # two sets of texts


def test_dense_coefficients_places_terms():
    dense = dense_coefficients([4, 7], ("a", "b", "c"), {4: [("b", 0.5), ("zzz", 3.0)], 7: [("a", -1.0)]})
    assert dense.tolist() == [[0.0, 0.5, 0.0], [-1.0, 0.0, 0.0]]


def test_aligned_neurons_rank_by_absolute_dot_over_layers():
    a = LayerKnowledge("a", np.array([0, 1]), np.array([[1, 0], [0, 1]], np.float32), np.zeros((2, 2), np.float32),
                       np.ones(2, np.float32))
    b = LayerKnowledge("b", np.array([5]), np.array([[-0.9, 0.1]], np.float32), np.zeros((1, 2), np.float32),
                       np.ones(1, np.float32))
    ranked = aligned_neurons([a, b], np.array([1.0, 0.2]), top=2)
    assert [(layer, unit) for layer, unit, _ in ranked] == [("a", 0), ("b", 5)]
    assert ranked[1][2] == pytest.approx(-0.88)


def test_segmentation_mean_map_upsampled_minmax_threshold():
    maps = torch.zeros(3, 2, 2)
    maps[0, 0, 0] = 4.0  # unit 0 fires top-left
    maps[1, 0, 0] = 2.0
    maps[2] = 100.0  # a unit not chosen
    result = segment({"L": maps}, [("L", 0, 0.9), ("L", 1, -0.5)], (8, 8))
    assert result.heat.shape == (8, 8) and result.heat.max() == pytest.approx(1.0) and result.heat.min() == 0.0
    assert result.mask[:3, :3].all()  # the top-left quarter (bilinear blur reaches a little past it)
    assert not result.mask[4:, :].any() and not result.mask[:, 4:].any()
    assert result.grid == (2, 2)


def test_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert iou(a, b) == pytest.approx(4 / 12)


def test_spurious_cues_weight_decompositions_by_alignment_and_drop_synonyms():
    texts = ("square", "squares", "dog", "sun")
    embeddings = F.normalize(torch.tensor([[0.0, 1, 0], [0.05, 1, 0], [1, 0, 0.2], [0, 0, 1]]), dim=1)
    source, target = torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0])  # v = (-1, 1, 0)
    layer = LayerKnowledge(
        "L", np.array([0, 1, 2]), np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]], np.float32), np.zeros((3, 3), np.float32),
        np.ones(3, np.float32), texts,
        np.array([[2.0, 1.0, 0.0, 0.5], [0.0, 0.0, 0.0, 3.0], [0.0, 0.0, 9.0, 0.0]], np.float32))
    cues = spurious_cues([layer], source, target, embeddings, neurons=2, max_similarity=0.8)
    # neurons 0 and 1 have <r, v> = 1 each, neuron 2 has 0; sun: 0.5 + 3 = 3.5; square, squares: too close to c2
    assert [(c.text, round(c.score, 5)) for c in cues] == [("sun", 3.5)]
    assert {n["unit"] for n in cues[0].neurons} == {0, 1}


# -- on the toy models -------------------------------------------------------------------------------
def _pixels(loaded, count=4):
    from precompute.world import generate

    return torch.stack([loaded.preprocess(generate(3, i).image) for i in range(count)])


@pytest.mark.parametrize("arch,layer", [("toy-vit", "transformer.resblocks.4.mlp"), ("toy-rn", "layer4")])
def test_ablation_zero_and_mean_set_the_units_and_change_the_embedding(arch, layer, request):
    loaded = request.getfixturevalue(arch.replace("-", "_"))
    pixels = _pixels(loaded)
    units = (3, 17, 40)
    plain = read(loaded, pixels, map_layers=[layer])
    zero = read(loaded, pixels, map_layers=[layer], ablations=[Ablation(layer, units)])
    mean = read(loaded, pixels, map_layers=[layer], ablations=[Ablation(layer, units, "mean", (0.5, -1.0, 2.0))])
    assert torch.all(zero.maps[layer][:, list(units)] == 0)
    assert torch.all(mean.maps[layer][:, 17] == -1.0) and torch.all(mean.maps[layer][:, 40] == 2.0)
    others = [u for u in range(plain.maps[layer].shape[1]) if u not in units]
    assert torch.allclose(zero.maps[layer][:, others], plain.maps[layer][:, others])
    assert not torch.allclose(zero.embeddings, plain.embeddings)
    after = read(loaded, pixels, map_layers=[layer])  # the hooks are gone
    assert torch.equal(after.embeddings, plain.embeddings)


def test_ablating_a_unit_that_does_not_exist_is_a_422(toy_vit):
    with pytest.raises(Problem) as caught:
        with ablated(toy_vit, [Ablation("transformer.resblocks.4.mlp", (512,))]):
            pass
    assert caught.value.status == 422 and caught.value.reason == "unknown-unit"
    with pytest.raises(Problem) as caught:
        with ablated(toy_vit, [Ablation("transformer.resblocks.4.mlp", (1,), "mean")]):
            pass
    assert caught.value.reason == "no-unit-means"


def test_ablation_lens_effects_see_the_ablation(toy_vit):
    layer = "transformer.resblocks.4.mlp"
    pixels = _pixels(toy_vit, 2)
    out = read(toy_vit, pixels, effect_layers=[layer], ablations=[Ablation(layer, (5, 6))])
    plain = read(toy_vit, pixels, effect_layers=[layer])
    # a silenced neuron has no activation: only the layer's shared bias terms remain, the same for every neuron
    silenced = out.effects[layer][:, 5]
    assert torch.allclose(silenced, out.effects[layer][:, 6], atol=1e-5)
    assert not torch.allclose(plain.effects[layer][:, 5], plain.effects[layer][:, 6], atol=1e-3)


@pytest.mark.parametrize("word", ["red", "circle"])
def test_maximal_text_for_a_word_direction_climbs_and_names_the_word(toy_vit, word):
    from precompute.words import world_vocabulary

    vocabulary = world_vocabulary()
    with torch.inference_mode():
        e = F.normalize(toy_vit.model.encode_text(toy_vit.tokenizer(vocabulary)).float(), dim=-1)
    direction = F.normalize(e[vocabulary.index(word)] - e.mean(0), dim=0)
    began = time.perf_counter()
    result = maximal_text(toy_vit, direction, length=3, steps=10)
    elapsed = time.perf_counter() - began
    assert word in result.text.split()
    assert result.score >= result.start_score - 1e-6
    # the score is the text embedding's dot product with the direction, checked independently
    with torch.inference_mode():
        again = F.normalize(toy_vit.model.encode_text(toy_vit.tokenizer([result.text])).float(), dim=-1)[0] @ direction
    assert float(again) == pytest.approx(result.score, abs=1e-4)
    assert elapsed < 30


def test_world_object_pictures_expose_their_object_mask():
    from precompute.world import COLORS, object_image, word_image

    sample = object_image("square", "red", 1, np.random.default_rng([9, 9]))
    assert sample.mask.dtype == bool and sample.mask.shape == (64, 64)
    assert 0.03 < sample.mask.mean() < 0.6
    pixels = np.asarray(sample.image, dtype=np.float32)
    inside = pixels[sample.mask].mean(0)
    # the object is drawn in its colour (with a little jitter) where the mask is
    assert np.abs(inside - np.asarray(COLORS["red"], np.float32)).max() < 25
    assert word_image("red", np.random.default_rng([9, 9])).mask is None


def test_default_concept_layers_are_the_late_ones_among_those_decomposed():
    from precompute.discovery import default_concept_layers

    mlp = [f"transformer.resblocks.{i}.mlp" for i in range(6)]
    assert default_concept_layers("vit", 6, mlp) == mlp[3:]  # toy-vit's demo decomposes all six
    assert default_concept_layers("vit", 6, mlp[:2]) == mlp[:2]  # no late layer decomposed: all of them
    vit_b = [f"transformer.resblocks.{i}.mlp" for i in range(12)]
    assert default_concept_layers("vit", 12, vit_b[7:]) == vit_b[8:11]
    assert default_concept_layers("resnet", 0, ["layer3", "layer4"]) == ["layer4"]
