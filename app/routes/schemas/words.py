"""Word arithmetic over image-based word embeddings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class EmbeddingChoice(BaseModel):
    model: str
    layer: str
    word_list: str
    url: str


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
    terms: list[WordTerm]
    results: list[WordResult]
    examples: list[str] = Field(description="A few words of the list, to start from.")
    missing: list[str]
    api_url: str
