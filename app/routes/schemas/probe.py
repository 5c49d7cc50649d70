"""The probe: its form and what it finds on an image."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.routes.schemas.common import THUMBNAIL_KIND_DESCRIPTION, THUMBNAIL_URL_DESCRIPTION, Cell, Pagination, ThumbnailKind


class ProbeModelChoice(BaseModel):
    id: str
    arch: str
    layers: list[str]
    default_layer: str | None


class DatasetChoice(BaseModel):
    id: str
    kind: str
    image_count: int


class DatasetImageOut(BaseModel):
    position: int
    image_url: str | None
    width: int
    height: int


class ProbeForm(BaseModel):
    models: list[ProbeModelChoice]
    model: str | None
    layer: str | None
    datasets: list[DatasetChoice]
    dataset: str | None
    dataset_images: list[DatasetImageOut]
    pagination: Pagination
    limits: dict[str, Any] = Field(description="Upload limits: max_bytes, max_pixels, formats.")
    api_url: str


class ProbeUnit(BaseModel):
    index: int
    activation: float = Field(description="The unit's activation on the image (spatial maximum).")
    relative: float | None = Field(description="Activation over the unit's maximum on the dataset.")
    dataset_max: float | None
    position: int | None
    cell: Cell | None
    map: list[list[float]] | None = Field(description="The spatial activation map, rows of the layer's grid.")
    map_max: float | None
    label: str | None
    thumbnail_url: str | None = Field(description=THUMBNAIL_URL_DESCRIPTION)
    thumbnail_kind: ThumbnailKind | None = Field(None, description=THUMBNAIL_KIND_DESCRIPTION)
    url: str
    api_url: str


class ProbeInput(BaseModel):
    source: Literal["upload", "dataset"]
    format: str | None = None
    width: int
    height: int
    sha256: str | None = None
    notes: list[str] = Field(default_factory=list, description="What was done to the picture (EXIF, alpha, frames).")
    dataset: str | None = None
    position: int | None = None
    filename: str | None = None
    model_view: str = Field(description="What the model saw, as a PNG data URI.")


class ProbeResult(BaseModel):
    model: str
    layer: str
    spatial: list[int] | None
    unit_count: int
    input: ProbeInput
    units: list[ProbeUnit]
    model_url: str
    layer_url: str
