"""The text side's semantic bars on the shipped toy models, end to end through the store and the
API (tests/text_semantics.py builds the store as a user does and measures):

- prompt search: for each colour name, the unit ranked first has >= 80 % of its top 50 held-out
  object pictures in that colour, for >= 6 of the 8 colours. Measured with the prompt read as a
  class name (the search's default): toy-rn 7, toy-vit 8 (met); read as typed: 1 and 6 -- in the
  toy world a bare colour name captions pictures of the written word, so the typed word finds
  the units that read it;
- decompositions: the world-pool decomposition of each colour unit of figures.json that meets
  its bar names its colour among its top 5 terms, for >= 5 of the 6 such units: toy-rn 5 (met),
  toy-vit 4 (missed)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest

from tests.text_semantics import measure

pytestmark = pytest.mark.slow


@lru_cache(maxsize=None)
def figures(model: str, folder: Path) -> dict:
    result = measure(model, folder)
    print(f"\nTEXT FIGURES {model}: prompts {result['prompts_pure_objects']} (objects), {result['prompts_pure_dataset']} "
          f"(dataset); decompositions name their colour for {result['units_naming_colour']} of "
          f"{result['units_meeting_bar']}; oracle {result['oracle']}")
    return result


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory):
    folders: dict[str, Path] = {}

    def get(model: str) -> dict:
        if model not in folders:
            folders[model] = tmp_path_factory.mktemp(model)
        return figures(model, folders[model])

    return get


@pytest.mark.parametrize("model", ["toy-rn", "toy-vit"])
def test_prompt_search_ranks_a_pure_colour_unit_first(measured, model: str) -> None:
    result = measured(model)
    assert result["prompts_pure_objects"]["class"] >= 6  # of the 8 colours
    # Every colour has units that pass: the bar is the ranking's, not the model's.
    assert all(entry["units_pure"] >= 5 for entry in result["oracle"].values())
    # Read as typed, a colour name finds the units that read the written word, not those that see the colour.
    assert result["prompts_pure_objects"]["text"] < result["prompts_pure_objects"]["class"]


def test_decompositions_name_their_colour_on_toy_rn(measured) -> None:
    assert measured("toy-rn")["units_naming_colour"] >= 5


@pytest.mark.xfail(strict=True, reason="toy-vit's world-pool decompositions (32 terms) name their colour among the top "
                   "5 terms for 4 of the 6 colour units meeting figures.json's bar")
def test_decompositions_name_their_colour_on_toy_vit(measured) -> None:
    assert measured("toy-vit")["units_naming_colour"] >= 5
