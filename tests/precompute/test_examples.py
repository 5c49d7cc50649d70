"""Exactness of the streaming accumulators: any split into shards and batches, merged in any
order, gives what a global sort / numpy over all values gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from precompute import keys as K
from precompute.buckets import select_buckets
from precompute.examples import ExampleParams, LayerAccumulator, calibrated_range, merge_all


def _dataset(seed: int, images: int, units: int, ties: bool):
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: ties everywhere, including -0.0 and 0.0
        values = rng.choice(np.array([-1.5, -0.0, 0.0, 0.25, 2.0], dtype=np.float32), size=(images, units))
    else:
        values = rng.standard_normal((images, units)).astype(np.float32) * 3
    args = rng.integers(0, 49, size=(images, units))
    shas = [f"{rng.integers(0, 2**63):016x}" * 4 for _ in range(images)]
    positions = np.arange(images, dtype=np.int64)
    return values, args, positions, K.sample_keys(shas, positions)


def _accumulate(values, args, positions, skeys, params, low, high, order, batch):
    acc = LayerAccumulator(values.shape[1], params, low, high, spatial=True)
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        acc.update(torch.from_numpy(values[idx]), torch.from_numpy(args[idx]),
                   torch.from_numpy(positions[idx]), torch.from_numpy(skeys[idx]))
    return acc


def _split(rng, n, parts):
    cuts = np.sort(rng.choice(np.arange(1, n), size=parts - 1, replace=False)) if parts > 1 else []
    return np.split(rng.permutation(n), cuts)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), images=st.integers(2, 90), units=st.integers(1, 6),
       k=st.integers(1, 12), shards=st.integers(1, 4), batch=st.integers(1, 17), ties=st.booleans())
def test_sharded_topk_equals_a_global_sort(seed, images, units, k, shards, batch, ties):
    shards = min(shards, images)
    values, args, positions, skeys = _dataset(seed, images, units, ties)
    params = ExampleParams(k=k, hist_bins=8, sample_bins=4, buckets=3, per_bucket=2)
    low, high = calibrated_range(values[: min(batch, images)])
    rng = np.random.default_rng(seed + 1)
    parts = [_accumulate(values, args, positions, skeys, params, low, high, part, batch)
             for part in _split(rng, images, shards)]
    merged = merge_all([parts[i] for i in rng.permutation(len(parts))]).results(skeys)
    single = _accumulate(values, args, positions, skeys, params, low, high, np.arange(images), images).results(skeys)

    n = min(k, images)
    for unit in range(units):
        column = values[:, unit]
        # Global order: activation, with -0.0 below 0.0 (numpy's sort holds them equal, so the
        # sign bit decides between them), then dataset position.
        negative_zero = np.signbit(column) & (column == 0)
        top = np.lexsort((positions, negative_zero, -column))[:n]
        bottom = np.lexsort((positions, ~negative_zero, column))[:n]
        for result in (merged, single):
            np.testing.assert_array_equal(result.top_positions[unit], top)
            np.testing.assert_array_equal(result.bottom_positions[unit], bottom)
            np.testing.assert_array_equal(result.top_values[unit].view(np.int32), column[top].view(np.int32))
            np.testing.assert_array_equal(result.top_args[unit], args[top, unit])
            np.testing.assert_array_equal(result.bottom_args[unit], args[bottom, unit])
    # Order-independent parts of the state are bit-identical however it was split.
    np.testing.assert_array_equal(merged.hist_counts, single.hist_counts)
    np.testing.assert_array_equal(merged.bucket_positions, single.bucket_positions)
    np.testing.assert_array_equal(merged.min, single.min)
    np.testing.assert_array_equal(merged.max, single.max)


def test_statistics_and_histogram_match_numpy_over_everything():
    values, args, positions, skeys = _dataset(7, 500, 5, ties=False)
    values[32:, 4] = np.abs(values[32:, 4]) * 40  # far beyond the calibration batch: overflow
    params = ExampleParams(k=5, hist_bins=16, sample_bins=8, buckets=4, per_bucket=3)
    low, high = calibrated_range(values[:32])
    rng = np.random.default_rng(0)
    parts = [_accumulate(values, args, positions, skeys, params, low, high, part, 13) for part in _split(rng, 500, 3)]
    result = merge_all(parts).results(skeys)
    np.testing.assert_allclose(result.mean, values.astype(np.float64).mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(result.std, values.astype(np.float64).std(0), rtol=1e-12)
    np.testing.assert_array_equal(result.min, values.min(0))
    np.testing.assert_array_equal(result.max, values.max(0))
    np.testing.assert_allclose(result.fraction_active, (values > 0).mean(0))
    for unit in range(5):
        h = result.histogram(unit)
        column = values[:, unit]
        width = (np.float32(high[unit]) - np.float32(low[unit]))
        inside = column[(column >= low[unit]) & (column < high[unit])]
        assert h["underflow"] == int((column < low[unit]).sum())
        assert h["overflow"] == int((column >= high[unit]).sum())
        assert sum(h["counts"]) == len(inside) and h["count"] == 500
        expected = np.bincount(np.floor((inside - low[unit]) * np.float32(16 / width)).astype(int).clip(0, 15), minlength=16)
        np.testing.assert_array_equal(h["counts"], expected)
    assert result.histogram(4)["overflow"] > 0


def test_reservoirs_hold_the_smallest_key_of_every_fine_bin_and_slot():
    values, args, positions, skeys = _dataset(3, 300, 3, ties=False)
    params = ExampleParams(k=2, hist_bins=4, sample_bins=5, buckets=2, per_bucket=4)
    low, high = calibrated_range(values[:20])
    acc = merge_all([_accumulate(values, args, positions, skeys, params, low, high, p, 7)
                     for p in _split(np.random.default_rng(1), 300, 4)])
    width = high - low
    slots = (skeys >> 32) % 4
    for unit in range(3):
        bins = np.clip(np.floor((values[:, unit] - low[unit]) * np.float32(5 / width[unit])), -1, 5).astype(int) + 1
        for b in range(7):
            for slot in range(4):
                members = (bins == b) & (slots == slot)
                got_key = int(acc.res_keys[unit, b, slot])
                if not members.any():
                    assert got_key == K.SAMPLE_EMPTY
                    continue
                best = np.flatnonzero(members)[np.argmin(skeys[members])]
                assert got_key == skeys[best]
                assert float(acc.res_values[unit, b, slot]) == values[best, unit]


def test_buckets_cover_min_to_max_and_hold_samples_within_their_edges():
    values, args, positions, skeys = _dataset(11, 400, 4, ties=False)
    params = ExampleParams(k=8, hist_bins=8, sample_bins=16, buckets=6, per_bucket=3)
    low, high = calibrated_range(values[:50])
    result = _accumulate(values, args, positions, skeys, params, low, high, np.arange(400), 50).results(skeys)
    for unit in range(4):
        edges = result.bucket_edges[unit]
        assert edges[0] == values[:, unit].min() and edges[-1] == values[:, unit].max()
        for b in range(6):
            slots = result.bucket_positions[unit, b]
            for slot, position in enumerate(slots[slots >= 0]):
                value = result.bucket_values[unit, b, slot]
                assert value == values[position, unit]
                assert edges[b] <= value and (value < edges[b + 1] or (b == 5 and value == edges[-1]))
        # The extreme buckets are never empty: the exact top/bottom-k reach them.
        assert (result.bucket_positions[unit, 0] >= 0).any() and (result.bucket_positions[unit, -1] >= 0).any()
        # With plenty of images in a bucket, it is full.
        inside = np.histogram(values[:, unit], bins=edges)[0]
        assert np.all((result.bucket_positions[unit] >= 0).sum(1)[inside >= 40] == 3)


def test_select_buckets_ignores_duplicates_and_empty_slots():
    keys = np.array([[5, 5, K.SAMPLE_EMPTY, 3, 9]], dtype=np.int64)
    values = np.array([[1.0, 1.0, 0.0, 0.0, 2.0]], dtype=np.float32)
    edges, out_keys, out_values, counts = select_buckets(np.array([0.0]), np.array([2.0]), keys, values, 2, 3)
    np.testing.assert_array_equal(edges, [[0.0, 1.0, 2.0]])
    assert out_keys[0, 0].tolist() == [3, K.SAMPLE_EMPTY, K.SAMPLE_EMPTY]
    assert out_keys[0, 1].tolist() == [5, 9, K.SAMPLE_EMPTY]
    assert counts.tolist() == [[1, 2]]


def test_state_round_trip_is_exact():
    values, args, positions, skeys = _dataset(5, 120, 3, ties=False)
    params = ExampleParams(k=4, hist_bins=8, sample_bins=4, buckets=3, per_bucket=2)
    low, high = calibrated_range(values[:10])
    acc = _accumulate(values, args, positions, skeys, params, low, high, np.arange(60), 10)
    arrays, meta = acc.state()
    restored = LayerAccumulator.from_state(arrays, meta)
    rest = np.arange(60, 120)
    for a in (acc, restored):
        for start in range(0, 60, 10):
            idx = rest[start : start + 10]
            a.update(torch.from_numpy(values[idx]), torch.from_numpy(args[idx]),
                     torch.from_numpy(positions[idx]), torch.from_numpy(skeys[idx]))
    one, two = acc.state()[0], restored.state()[0]
    for name in one:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)


def test_keys_round_trip_and_order():
    values = torch.tensor([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, np.inf], dtype=torch.float32)
    order = K.float_order(values)
    assert torch.all(order[1:] > order[:-1])
    positions = torch.tensor([0, 5, 2**32 - 1, 7, 1, 3, 9, 4])
    for encode, decode in ((K.top_keys, K.decode_top), (K.bottom_keys, K.decode_bottom)):
        v, p, valid = decode(encode(values, positions))
        assert torch.equal(v.view(torch.int32), values.view(torch.int32)) and torch.equal(p, positions) and valid.all()
    with pytest.raises(ValueError):
        K.sample_keys(["ab" * 32], np.array([2**32]))
