"""Bodies of the API's writes and what they answer."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.routes.schemas.common import AnnotationOut


class TextIn(BaseModel):
    text: str = Field(min_length=1, max_length=2000)


class LabelOut(BaseModel):
    unit: str
    label: str | None
    annotation: AnnotationOut | None
    url: str


class CollectionIn(BaseModel):
    id: str = Field(min_length=1, max_length=64, description="Slug for the URL: lowercase letters, digits, '-'.")
    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=2000)


class CollectionPatch(BaseModel):
    title: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)


class CollectionUnitIn(BaseModel):
    model: str = Field(min_length=1, max_length=128)
    layer: str = Field(min_length=1, max_length=256)
    index: int = Field(ge=0, le=2**31 - 1)
    note: str = Field("", max_length=2000)


class Deleted(BaseModel):
    deleted: bool
