"""The Done bars on the shipped toy models (a reduced run: fewer units and steps than the
full measurement, `python -m tests.precompute.featureviz.semantics`, whose numbers are in
BENCHMARKS.md)."""

import pytest

from tests.precompute.featureviz.semantics import measure

STEPS = 128


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["toy-rn", "toy-vit"])
def test_visualizations_meet_the_bars(model_id):
    result = measure(model_id, STEPS, images=500, units=tuple(range(8)))
    print(result)
    assert result["fraction_at_least_dataset_max_channel"] >= 0.95
    assert result["colour_units_right"] >= min(5, result["colour_units_meeting_bar"])
    assert result["diversity_gram_cosine"] < result["plain_seeds_gram_cosine"]
    assert result["fraction_text_facet_scores_higher"] >= 0.8
