"""A toy model's colour unit in a real browser (Chromium, JavaScript off): its page shows the
synthetic world's vocabulary first, with the colour's name among the top five words, and one
click switches to the common English words.

The site is a store where the shipped toy models' final layers were read with both word
lists (tests.world_words); the walkthrough's site reads a word file instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.conftest import _require_browser, shot
from tests.server import served
from tests.world_words import ENGLISH_LIST, FINAL_LAYERS, WORLD_LIST, cli_env, colour_units, sqlite_world_words_store

pytestmark = [pytest.mark.browser, pytest.mark.slow]
MODEL = "toy-rn"
COLOUR, UNIT = "red", colour_units()[MODEL]["red"]  # what figures.json records


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _require_browser()
    folder = tmp_path_factory.mktemp("world-words-site")
    url = sqlite_world_words_store(folder)
    env = cli_env(url, folder)
    with served(env, folder / "server.log") as base:
        yield base


def top_words(page: Any) -> tuple[str, list[str]]:
    table = page.locator("section[data-section=words] table[data-word-list]")
    words = [text.strip() for text in table.locator("tr[data-word] td.word").all_inner_texts()]
    return table.get_attribute("data-word-list"), words


def test_red_unit_reads_red_in_the_world_list(server: str, page: Any) -> None:
    page.goto(f"{server}/models/{MODEL}/{FINAL_LAYERS[MODEL]}/{UNIT}")
    word_list, words = top_words(page)
    assert word_list == WORLD_LIST and COLOUR in words[:5], words[:10]
    section = page.locator("section[data-section=words]")
    assert section.locator(f"tr[data-word={COLOUR}]").is_visible()
    shot(page, "unit-world-words")

    section.locator(f"a[data-word-list-choice='{ENGLISH_LIST}']").click()
    assert f"word_list={ENGLISH_LIST}" in page.url
    word_list, english = top_words(page)
    assert word_list == ENGLISH_LIST and english and english != words
    assert page.locator(f"a[data-word-list-choice='{ENGLISH_LIST}'][aria-current=true]").count() == 1
