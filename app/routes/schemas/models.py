"""The home page (registered models) and a model's page."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.routes.schemas.common import Computed, Pagination


class JobProgress(BaseModel):
    kind: str
    shards: dict[str, int] = Field(description="Number of shards in each state.")
    done_items: int
    total_items: int
    progress: float = Field(description="Fraction of items done, 0 to 1.")


class LayerInfo(BaseModel):
    name: str = Field(description="PyTorch module path without the leading `visual.`.")
    kind: str
    units: int
    spatial: list[int] | None = Field(description="[height, width] of the activation map, if spatial.")
    has_class_token: bool
    position: int
    url: str
    api_url: str
    computed: Computed | None = Field(None, description="Units of the layer that have each kind of result.")
    jobs: list[JobProgress] | None = None


class ModelSummary(BaseModel):
    id: str = Field(description="Slug chosen at registration; used in every URL.")
    arch: str = Field(description="open_clip model name.")
    source: str = Field(description="`pretrained`, `checkpoint`, `embedded` or `random`.")
    pretrained_tag: str | None
    checkpoint_sha256: str | None
    image_size: int
    description: str
    layer_count: int
    unit_count: int = Field(description="Sum of the units of all layers.")
    created_at: str | None
    url: str = Field(description="The HTML page.")
    api_url: str = Field(description="This resource in the API.")
    layers: list[LayerInfo] = Field(default_factory=list)
    computed: Computed = Field(default_factory=dict, description="Units with each kind of result, over all layers.")


class ModelList(BaseModel):
    models: list[ModelSummary]
    count: int = Field(description="Models on this page.")
    pagination: Pagination
    api_url: str


class ModelDetail(ModelSummary):
    checkpoint_path: str | None
    preprocess: dict[str, Any] = Field(description="mean, std, interpolation, resize_mode.")
    model_jobs: list[JobProgress] = Field(description="Jobs that span the whole model.")
    jobs_url: str
