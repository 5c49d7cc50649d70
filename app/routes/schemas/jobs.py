"""The precompute jobs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.routes.schemas.common import Pagination


class JobOut(BaseModel):
    id: int
    kind: str
    model: str
    layer: str | None
    dataset: str | None
    shard: int
    shard_count: int
    state: Literal["pending", "running", "done", "failed"]
    progress: float
    done_items: int
    total_items: int
    error: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    updated_at: str | None
    model_url: str
    layer_url: str | None


class JobsPage(BaseModel):
    jobs: list[JobOut]
    counts: dict[str, int] = Field(description="Jobs in each state (under the model and kind filters).")
    filters: dict[str, str | None]
    kinds: list[str]
    pagination: Pagination
    api_url: str
