"""Search by text, and by a text prompt (live)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.routes.schemas.common import THUMBNAIL_KIND_DESCRIPTION, THUMBNAIL_URL_DESCRIPTION, Pagination, ThumbnailKind


class SearchResult(BaseModel):
    model: str
    layer: str
    index: int
    label: str | None
    matched: Literal["label", "note", "word", "decomposition"]
    match_text: str
    thumbnail_url: str | None = Field(description=THUMBNAIL_URL_DESCRIPTION)
    thumbnail_kind: ThumbnailKind | None = Field(None, description=THUMBNAIL_KIND_DESCRIPTION)
    url: str
    api_url: str


class ModelChoice(BaseModel):
    id: str
    layers: list[str]


class SearchPage(BaseModel):
    q: str
    model: str | None
    layer: str | None
    results: list[SearchResult]
    pagination: Pagination
    models: list[ModelChoice]
    api_url: str


class PromptResult(BaseModel):
    model: str
    layer: str
    index: int
    rank: int = Field(description="Place in the prompt's sparse code: positive coefficients first, then negative, each in the order the pursuit picked them (the first: the direction most aligned with the prompt).")
    coefficient: float = Field(description="Signed weight of the unit's (unit-length) direction in the prompt's sparse code (OMP).")
    similarity: float = Field(description="Cosine between the unit's direction and the prompt embedding (centred where centred_on says so).")
    label: str | None
    thumbnail_url: str | None = Field(description=THUMBNAIL_URL_DESCRIPTION)
    thumbnail_kind: ThumbnailKind | None = Field(None, description=THUMBNAIL_KIND_DESCRIPTION)
    url: str
    api_url: str


class PromptPage(BaseModel):
    prompt: str
    model: str
    layer: str | None
    reading: Literal["class", "text"] = Field("class", description="How the prompt was embedded: as the zero-shot classifier reads a class name (the mean of its prompt templates), or as typed.")
    layers_searched: list[str]
    centred_on: str | None = Field(None, description="The text pool whose mean embedding was taken from the prompt's (the prompt read as typed only).")
    results: list[PromptResult]
    missing: list[str]
