"""A layer's page: the grid of its units."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.routes.schemas.common import (
    THUMBNAIL_KIND_DESCRIPTION, THUMBNAIL_URL_DESCRIPTION, ModelRef, Pagination, ThumbnailKind,
)
from app.routes.schemas.models import LayerInfo


class UnitCard(BaseModel):
    index: int
    label: str | None
    top_words: list[str]
    max: float | None
    mean: float | None
    fraction_active: float | None
    thumbnail_url: str | None = Field(description=THUMBNAIL_URL_DESCRIPTION)
    thumbnail_kind: ThumbnailKind | None = Field(description=THUMBNAIL_KIND_DESCRIPTION)
    url: str
    api_url: str


class LayerPage(BaseModel):
    model: ModelRef
    layer: LayerInfo
    sort: str
    sorts: list[str]
    units: list[UnitCard]
    pagination: Pagination
    export_url: str = Field(description="The whole layer as JSON Lines, one unit per line.")
    missing: list[str] = Field(description="What has not been computed for this layer, in words.")
    api_url: str
