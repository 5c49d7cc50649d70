"""Collections of units."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.routes.schemas.common import THUMBNAIL_KIND_DESCRIPTION, THUMBNAIL_URL_DESCRIPTION, Pagination, ThumbnailKind


class CollectionSummary(BaseModel):
    id: str
    title: str
    description: str
    author: str
    unit_count: int
    created_at: str | None
    updated_at: str | None
    url: str
    api_url: str


class CollectionList(BaseModel):
    collections: list[CollectionSummary]
    pagination: Pagination
    api_url: str


class CollectionMember(BaseModel):
    model: str
    layer: str
    index: int
    label: str | None
    note: str
    top_words: list[str]
    thumbnail_url: str | None = Field(description=THUMBNAIL_URL_DESCRIPTION)
    thumbnail_kind: ThumbnailKind | None = Field(None, description=THUMBNAIL_KIND_DESCRIPTION)
    url: str
    api_url: str


class CollectionDetail(BaseModel):
    id: str
    title: str
    description: str
    author: str
    created_at: str | None
    updated_at: str | None
    units: list[CollectionMember]
    pagination: Pagination
    url: str
    api_url: str
