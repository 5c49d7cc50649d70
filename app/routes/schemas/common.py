"""Shapes every page shares: refusals, paging, references to models and cells, notes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong, for people.")
    reason: str = Field(description="What went wrong, for programs (e.g. `unknown-model`).")


class UnprocessableBody(BaseModel):
    """422: a query or body that cannot be answered as given. FastAPI's own validation errors
    carry a list of problems in `detail`; the API's carry a sentence and a `reason`."""

    detail: str | list[dict[str, Any]]
    reason: str | None = None
    unknown_words: list[str] | None = Field(None, description="Words the model or word list does not know.")


class Health(BaseModel):
    status: str = Field(description="`ok` when the database answers and its schema is current.")
    database: str
    schema_revision: str | None = Field(description="Alembic revision the database is at.")
    expected_revision: str | None = Field(description="Newest migration shipped with this server.")


class Pagination(BaseModel):
    page: int = Field(description="1-based page number.")
    per_page: int
    total: int = Field(description="Items over all pages.")
    pages: int
    next_url: str | None = Field(description="The next page in the API, or null on the last page.")
    prev_url: str | None
    next_page_url: str | None = Field(description="The next page as HTML.")
    prev_page_url: str | None


Computed = dict[str, int]

# What a listed unit's thumbnail shows: its main feature visualization, or, until one is
# computed, the crop around the maximum of its strongest dataset example.
ThumbnailKind = Literal["featureviz", "example"]
THUMBNAIL_URL_DESCRIPTION = "The unit's picture, or null when it has neither a feature visualization nor a dataset example."
THUMBNAIL_KIND_DESCRIPTION = "What the thumbnail shows: the feature visualization, else the strongest dataset example."


class ModelRef(BaseModel):
    id: str
    arch: str | None = None
    url: str
    api_url: str


class Cell(BaseModel):
    row: int
    col: int
    x: float = Field(description="Left edge of the cell, percent of the image width.")
    y: float
    w: float
    h: float


class AnnotationOut(BaseModel):
    id: int
    kind: Literal["label", "note"]
    text: str
    author: str
    created_at: str | None
    updated_at: str | None
