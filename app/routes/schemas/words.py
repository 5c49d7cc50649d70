"""Word arithmetic over image-based word embeddings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class EmbeddingChoice(BaseModel):
    model: str
    layer: str
    word_list: str
    url: str


class WordListChoice(BaseModel):
    id: str
    source: str = Field(description="Where the words come from: `wordfreq:en:10000`, `synthetic-world:vocabulary`, a file.")
    label: str = Field(description="A reader's name for the list.")
    current: bool = Field(description="Whether this is the list shown.")
    url: str
    api_url: str


class WordTerm(BaseModel):
    sign: Literal["+", "-"]
    word: str


class WordResult(BaseModel):
    word: str
    similarity: float


class WordsPage(BaseModel):
    q: str
    available: list[EmbeddingChoice]
    model: str | None
    layer: str | None
    word_list: str | None
    word_lists: list[WordListChoice] = Field(
        default_factory=list, description="The word lists of this model and layer, the default first: the synthetic "
        "world's vocabulary for a toy model, the common English words for a real one.")
    terms: list[WordTerm]
    results: list[WordResult]
    examples: list[str] = Field(description="A few words of the list, to start from.")
    missing: list[str]
    api_url: str
