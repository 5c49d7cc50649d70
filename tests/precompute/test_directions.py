"""Streaming per-neuron directions against the authors' whole-matrix recipe (numpy, every effect
in memory), and exact merging of shards."""

import numpy as np
import pytest
import torch

from precompute.directions import MeanEffects, TopEffects, directions


def _authors(effects: np.ndarray, k: int, ties: list | None = None):
    """compute_pcas.py's recipe on an [images, neurons, d] array: centre by the mean, keep the k
    largest norms, first right-singular vector signed to the majority, k-th largest norm.
    `ties` collects whether each neuron's vote was even (then the sign is LAPACK's, arbitrary)."""
    mean = effects.mean(axis=0)
    out, thresholds = [], []
    for n in range(effects.shape[1]):
        centred = effects[:, n] - mean[n]
        norms = np.linalg.norm(centred, axis=-1)
        important = np.argsort(norms)[-k:]
        _, _, vh = np.linalg.svd(centred[important].astype(np.float64), full_matrices=False)
        positive = int(((centred[important] @ vh[0]) > 0).sum())
        if ties is not None:
            ties.append(2 * positive == min(k, len(centred)))
        out.append(vh[0] if positive > k // 2 else -vh[0])
        thresholds.append(np.sort(norms)[-k:][0])
    return mean, np.stack(out), np.array(thresholds)


def _effects(images=60, neurons=9, dim=16, seed=0):
    """Neurons with a dominant direction each (as the paper finds), plus noise and a bias; one
    neuron that never fires (all zero effects)."""
    rng = np.random.default_rng(seed)
    directions_true = rng.standard_normal((neurons, dim))
    directions_true /= np.linalg.norm(directions_true, axis=1, keepdims=True)
    scale = rng.exponential(1.0, (images, neurons)) * (rng.random((images, neurons)) < 0.3)
    effects = scale[..., None] * directions_true[None] + 0.05 * rng.standard_normal((images, neurons, dim))
    effects += rng.standard_normal((1, neurons, dim))
    effects[:, -1] = 0.0
    return effects.astype(np.float32), directions_true


def _stream(effects: np.ndarray, k: int, batch: int, shards: int = 1):
    bounds = [(s * len(effects) // shards, (s + 1) * len(effects) // shards) for s in range(shards)]
    means = []
    for start, stop in bounds:
        acc = MeanEffects(*effects.shape[1:])
        for b in range(start, stop, batch):
            acc.update(torch.from_numpy(effects[b:min(stop, b + batch)]))
        means.append(acc)
    mean = MeanEffects.merge(means)
    tops = []
    for start, stop in bounds:
        top = TopEffects(mean.mean(), k)
        for b in range(start, stop, batch):
            end = min(stop, b + batch)
            top.update(torch.from_numpy(effects[b:end]), np.arange(b, end))
        tops.append(top)
    return mean, TopEffects.merge(tops)


def test_streamed_directions_equal_the_whole_matrix_recipe():
    effects, truth = _effects()
    k = 10
    mean, top = _stream(effects, k, batch=7)
    assert mean.count == len(effects)
    r, thresholds = directions(top)
    expected_mean, expected_r, expected_thresholds = _authors(effects.astype(np.float64), k)
    np.testing.assert_allclose(mean.mean(), expected_mean, rtol=1e-5, atol=1e-6)
    live = slice(0, effects.shape[1] - 1)
    np.testing.assert_allclose(r[live], expected_r[live], atol=1e-4)
    np.testing.assert_allclose(thresholds, expected_thresholds, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(r[live], axis=1), 1.0, rtol=1e-5)
    # each neuron's direction is its planted one, up to the sign the majority decides
    assert (np.abs((r[live] * truth[live]).sum(axis=1)) > 0.95).all()
    # the silent neuron: no direction, zero threshold
    assert not r[-1].any() and thresholds[-1] == 0
    # its kept images are the ones with the largest norms, by position
    centred = effects - expected_mean
    norms = np.linalg.norm(centred[:, 0], axis=-1)
    assert set(top.positions[0]) == set(np.argsort(norms)[-k:])


def test_shards_and_batches_do_not_change_the_result():
    effects, _ = _effects(images=45, seed=1)
    one_mean, one = _stream(effects, 8, batch=45)
    many_mean, many = _stream(effects, 8, batch=4, shards=3)
    np.testing.assert_allclose(many_mean.mean(), one_mean.mean(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.sort(many.positions, axis=1), np.sort(one.positions, axis=1))
    r_one, t_one = directions(one)
    r_many, t_many = directions(many)
    np.testing.assert_allclose(r_many, r_one, atol=1e-5)
    np.testing.assert_allclose(t_many, t_one, rtol=1e-5)


def test_fewer_images_than_k_keeps_them_all():
    effects, _ = _effects(images=5, seed=2)
    _, top = _stream(effects, 100, batch=2)
    assert (top.kept[:-1] == 5).all()
    r, thresholds = directions(top)
    expected_mean, expected_r, expected_thresholds = _authors(effects.astype(np.float64), 5)
    np.testing.assert_allclose(thresholds[:-1], expected_thresholds[:-1], rtol=1e-5)
    agree = np.abs((r[:-1] * expected_r[:-1]).sum(axis=1))
    assert (agree > 1 - 1e-6).all()


def test_state_round_trips():
    effects, _ = _effects(images=12, seed=3)
    mean, top = _stream(effects, 4, batch=5)
    again = MeanEffects.from_state(*mean.state())
    np.testing.assert_array_equal(again.sum, mean.sum)
    assert again.count == mean.count
    copy = TopEffects.from_state(*top.state())
    for name in ("norms", "positions", "effects", "mean"):
        np.testing.assert_array_equal(getattr(copy, name), getattr(top, name))


def test_bad_arguments():
    with pytest.raises(ValueError):
        TopEffects(np.zeros((2, 3), np.float32), 0)
    with pytest.raises(ValueError):
        MeanEffects(2, 3).mean()
