"""The unit page's "Text decomposition" panel in a real browser (Chromium, JavaScript off): a
store whose toy-vit directions are planted text embeddings (tests.text_side), decomposed by
`microscope precompute decompose` as a user runs it, shows the signed terms as visible bars
with the reconstruction score."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.conftest import _require_browser, shot
from tests.server import served
from tests.text_side import LAYER, MODEL, POOL, prepare_planted_store
from tests.world_words import cli_env, embedded, microscope

pytestmark = [pytest.mark.browser, pytest.mark.slow]
RED_UNIT = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _require_browser()
    from store import migrations

    folder = tmp_path_factory.mktemp("decomposition-site")
    url = f"sqlite:///{folder / 'microscope.db'}"
    env = cli_env(url, folder)
    migrations.upgrade(url)
    prepare_planted_store(url, folder, embedded(MODEL))
    result = microscope(env, "precompute", "decompose", "--model", MODEL, "--layer", LAYER, "--pool", POOL, "--terms", "8",
                        "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    bad = microscope(env, "precompute", "decompose", "--model", MODEL, "--layer", LAYER, "--pool", "nope")
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "no text pool 'nope'" in bad.stderr
    with served(env, folder / "server.log") as base:
        yield base


def test_the_panel_renders_signed_bars_and_the_score(server: str, page: Any) -> None:
    page.goto(f"{server}/models/{MODEL}/{LAYER}/{RED_UNIT}")
    panel = page.locator("section[data-section=decomposition]")
    rows = panel.locator(f"table[data-pool={POOL}] tr[data-text]")
    assert rows.count() == 8
    assert rows.nth(0).get_attribute("data-text") == "red"
    widths = [rows.nth(i).locator("td.bar span").bounding_box()["width"] for i in range(8)]
    assert all(w > 0 for w in widths) and widths[0] == max(widths)  # the largest |coefficient| fills its bar
    assert widths == sorted(widths, reverse=True)
    assert rows.nth(0).locator("td.bar.pos span").is_visible()
    score = panel.locator("span.reconstruction")
    assert score.is_visible() and "Reconstruction score" in score.inner_text()
    assert 0.5 < float(score.get_attribute("data-score")) <= 1
    shot(page, "unit-text-decomposition")
