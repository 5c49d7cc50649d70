"""Response shapes of the v1 API, for validation and for the OpenAPI document at /docs.

Within v1 changes are additive only: new optional fields may appear, none disappear.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong, for people.")
    reason: str = Field(description="What went wrong, for programs (e.g. `unknown-model`).")


class Health(BaseModel):
    status: str = Field(description="`ok` when the database answers and its schema is current.")
    database: str
    schema_revision: str | None = Field(description="Alembic revision the database is at.")
    expected_revision: str | None = Field(description="Newest migration shipped with this server.")


class ModelSummary(BaseModel):
    id: str = Field(description="Slug chosen at registration; used in every URL.")
    arch: str = Field(description="open_clip model name.")
    source: str = Field(description="`pretrained`, `checkpoint` or `embedded`.")
    pretrained_tag: str | None
    checkpoint_sha256: str | None
    image_size: int
    description: str
    layer_count: int
    unit_count: int = Field(description="Sum of the units of all layers.")
    created_at: str
    url: str = Field(description="The HTML page.")
    api_url: str = Field(description="This resource in the API.")


class ModelList(BaseModel):
    models: list[ModelSummary]
    count: int
    api_url: str


class LayerInfo(BaseModel):
    name: str = Field(description="PyTorch module path without the leading `visual.`.")
    kind: str
    units: int
    spatial: list[int] | None = Field(description="[height, width] of the activation map, if spatial.")
    has_class_token: bool
    position: int


class ModelDetail(ModelSummary):
    checkpoint_path: str | None
    preprocess: dict[str, Any] = Field(description="mean, std, interpolation, resize_mode.")
    layers: list[LayerInfo]
