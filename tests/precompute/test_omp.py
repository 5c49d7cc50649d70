"""Batched OMP against scikit-learn's orthogonal_mp on the same dictionaries."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import orthogonal_mp

from precompute.omp import omp, reconstruct, text_dictionary


def _pool(atoms=1500, dim=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # correlated embeddings, like a text tower's (a shared offset the centring removes, uneven dimensions)
    base = torch.randn(atoms, dim, generator=generator) * torch.linspace(0.2, 2.0, dim) + 3.0
    return base, generator


def _targets(dictionary, generator, count=300, planted=6, noise=0.3):
    picks = torch.randint(0, len(dictionary), (count, planted), generator=generator)
    weights = torch.randn(count, planted, generator=generator, dtype=dictionary.dtype)
    noise = noise * torch.randn(count, dictionary.shape[1], generator=generator, dtype=dictionary.dtype)
    return torch.einsum("bk,bkd->bd", weights, dictionary[picks]) + noise


def _compare(dictionary, targets, terms):
    codes = omp(dictionary, targets, terms)
    reference = orthogonal_mp(dictionary.double().numpy().T, targets.double().numpy().T, n_nonzero_coefs=terms).T
    dense = codes.dense(len(dictionary)).double().numpy()
    same = np.array([set(np.flatnonzero(reference[b])) == set(np.flatnonzero(dense[b])) for b in range(len(targets))])
    return codes, reference, dense, same


@pytest.mark.parametrize("normalisation", ["unit", "per-dimension"])
def test_same_atoms_and_coefficients_as_sklearn(normalisation):
    embeddings, generator = _pool()
    dictionary = text_dictionary(embeddings, normalisation)
    if normalisation == "unit":
        assert torch.allclose(dictionary.norm(dim=1), torch.ones(len(dictionary)), atol=1e-5)
    else:  # every dimension has norm 100 across the pool, atoms are not unit length
        assert torch.allclose(dictionary.norm(dim=0), torch.full((dictionary.shape[1],), 100.0), rtol=1e-4)
        assert dictionary.norm(dim=1).std() > 0.05
    targets = _targets(dictionary, generator)
    codes, reference, dense, same = _compare(dictionary, targets, 32)
    assert same.mean() >= 0.99, same.mean()
    scale = max(1.0, float(np.abs(reference).max()))
    assert np.abs(dense[same] - reference[same]).max() <= 1e-4 * scale
    assert (codes.counts == 32).all()


def test_float64_dictionary_agrees_exactly():
    embeddings, generator = _pool(seed=3)
    dictionary = text_dictionary(embeddings.double())
    targets = _targets(dictionary, generator, count=100)
    _, reference, dense, same = _compare(dictionary, targets, 16)
    assert same.all()
    assert np.abs(dense - reference).max() < 1e-9


def test_planted_sparse_codes_are_recovered_with_score_one():
    embeddings, generator = _pool(atoms=300, dim=128, seed=1)  # incoherent enough for exact recovery
    dictionary = text_dictionary(embeddings)
    picks = torch.stack([torch.randperm(len(dictionary), generator=generator)[:4] for _ in range(50)])
    weights = torch.rand(50, 4, generator=generator) + 0.5
    targets = torch.einsum("bk,bkd->bd", weights, dictionary[picks])
    codes = omp(dictionary, targets, 4)
    for b in range(50):
        assert set(codes.atoms[b].tolist()) == set(picks[b].tolist())
        found = dict(codes.ranked(b))
        for atom, weight in zip(picks[b].tolist(), weights[b].tolist()):
            assert found[atom] == pytest.approx(weight, abs=1e-4)
    assert torch.allclose(codes.scores, torch.ones(50), atol=1e-5)
    assert torch.allclose(reconstruct(dictionary, codes), targets, atol=1e-4)


def test_scores_are_cosines_of_reconstructions_and_grow_with_terms():
    embeddings, generator = _pool(seed=2)
    dictionary = text_dictionary(embeddings)
    targets = _targets(dictionary, generator, count=40, noise=1.0)
    few, many = omp(dictionary, targets, 4), omp(dictionary, targets, 24)
    recon = reconstruct(dictionary, few)
    expected = torch.nn.functional.cosine_similarity(recon, targets, dim=1)
    assert torch.allclose(few.scores, expected, atol=1e-5)
    assert (many.scores > few.scores).all()
    assert (many.scores < 1).all()  # noise the pool cannot explain


def test_chunking_does_not_change_results_and_zero_targets_get_no_terms():
    embeddings, generator = _pool(seed=4)
    dictionary = text_dictionary(embeddings)
    targets = _targets(dictionary, generator, count=30)
    targets[7] = 0
    whole = omp(dictionary, targets, 8)
    chunked = omp(dictionary, targets, 8, memory=1)  # one neuron per chunk
    assert torch.equal(whole.atoms, chunked.atoms)
    assert torch.allclose(whole.coefficients, chunked.coefficients, atol=1e-6)
    assert int(whole.counts[7]) == 0 and float(whole.scores[7]) == 0.0
    assert (whole.atoms[7] == -1).all() and whole.ranked(7) == []
    assert int(whole.counts[6]) == 8


def test_a_neuron_stops_when_its_residual_vanishes():
    dictionary = torch.eye(6)
    targets = torch.tensor([[1.0, 2.0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    codes = omp(dictionary, targets, 5)
    assert codes.counts.tolist() == [2, 5]
    assert codes.ranked(0) == [(1, pytest.approx(2.0)), (0, pytest.approx(1.0))]


@pytest.mark.parametrize("terms", [0, 129, 7])
def test_bad_term_counts_are_refused(terms):
    dictionary = torch.eye(6)
    with pytest.raises(ValueError, match="terms must be between 1 and"):
        omp(dictionary, torch.ones(2, 6), terms)


def test_bad_normalisation_is_refused():
    with pytest.raises(ValueError, match="normalisation"):
        text_dictionary(torch.ones(3, 2), "l2")
