"""Collections of units."""

from __future__ import annotations

from pydantic import BaseModel

from app.routes.schemas.common import Pagination


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
    thumbnail_url: str | None
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
