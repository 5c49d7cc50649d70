"""The Done bar of the silencing probe, on held-out pictures: for toy-rn, silencing the units the
typographic probe lists for an attack that works restores the true class on most attacked
pictures, and silencing as many random units does not."""

from __future__ import annotations

import numpy as np
import pytest

from precompute.typographic import ProbeItem, attack_readout, render_attack
from precompute.zeroshot import label_set

LISTED = 128  # the probe lists up to 128 units; toy-rn's layer4 has 1024


@pytest.mark.slow
def test_silencing_the_listed_units_restores_the_true_class(toy_rn):
    from precompute.world import COLORS, SHAPES, object_image

    shapes = label_set("world-shapes")
    target = shapes.index("square")
    rng = np.random.default_rng([41, 22])  # held out: the training world is seed 0
    pictures = [(object_image(SHAPES[i % 6], list(COLORS)[int(rng.integers(8))], int(rng.integers(1, 3)), rng).image, i % 6)
                for i in range(36)]
    pictures = [(p, s) for p, s in pictures if s != target]
    attacked = [render_attack(p, "square").image for p, _ in pictures]
    listed = attack_readout(toy_rn, "layer4", [ProbeItem(p, a, "listed") for (p, _), a in zip(pictures, attacked)], shapes,
                            top_units=LISTED)
    units = toy_rn.spec.layer("layer4").units
    draw = np.random.default_rng(0)
    random_sets = [tuple(int(u) for u in draw.choice(units, LISTED, replace=False)) for _ in pictures]
    randomly = attack_readout(toy_rn, "layer4", [ProbeItem(p, a, r) for (p, _), a, r in zip(pictures, attacked, random_sets)],
                              shapes, top_units=LISTED)
    # The pictures the attack fooled: classified truly before, as the target after.
    fooled = [i for i, (r, (_, s)) in enumerate(zip(listed, pictures)) if r["before_index"] == s and r["after_index"] == target]
    assert len(fooled) >= len(pictures) // 2
    restored = np.mean([listed[i]["silenced"]["after_index"] == pictures[i][1] for i in fooled])
    by_chance = np.mean([randomly[i]["silenced"]["after_index"] == pictures[i][1] for i in fooled])
    print(f"fooled {len(fooled)}/{len(pictures)}; listed units restore {restored:.3f}, random units {by_chance:.3f}")
    assert restored > 0.5
    assert by_chance < 0.2
