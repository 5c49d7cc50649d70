"""The typographic probe: its form, what an attack does to the top classes, which units carried it,
and the typographic evaluation tables."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.routes.schemas.common import THUMBNAIL_KIND_DESCRIPTION, THUMBNAIL_URL_DESCRIPTION, Pagination, ThumbnailKind
from app.routes.schemas.probe import DatasetChoice, DatasetImageOut, ProbeModelChoice


class TypographicForm(BaseModel):
    models: list[ProbeModelChoice]
    model: str | None
    layer: str | None
    datasets: list[DatasetChoice]
    dataset: str | None
    dataset_images: list[DatasetImageOut]
    pagination: Pagination
    limits: dict[str, Any]
    label_sets: list[str] = Field(description="Built-in label sets; any two or more labels of your own also work.")
    label_set: str = Field(description="The label set the form starts with for this model.")
    text: str
    api_url: str


class ClassScore(BaseModel):
    label: str
    index: int
    probability: float


class Term(BaseModel):
    text: str
    coefficient: float


class TypographicUnit(BaseModel):
    index: int
    before: float = Field(description="The unit's activation (spatial maximum) on the clean picture.")
    after: float = Field(description="Its activation on the attacked picture.")
    change: float
    label: str | None
    decomposition: list[Term] = Field(description="The first terms of the unit's stored sparse text decomposition, if any.")
    thumbnail_url: str | None = Field(description=THUMBNAIL_URL_DESCRIPTION)
    thumbnail_kind: ThumbnailKind | None = Field(None, description=THUMBNAIL_KIND_DESCRIPTION)
    url: str
    api_url: str


class PlacementOut(BaseModel):
    x: float
    y: float
    size: float
    color: str
    outline: str | None
    rotation: float


class AttackOut(BaseModel):
    text: str
    setup: Literal["fixed", "custom"]
    placements: list[PlacementOut]
    pixel_cover: float = Field(description="Share of the picture's pixels the attack changed by any amount.")


class LabelSetOut(BaseModel):
    id: str
    classes: int
    custom: bool
    names: list[str] | None


class Silenced(BaseModel):
    units: list[int]
    before: list[ClassScore]
    after: list[ClassScore]
    attack_still_works: bool
    restored: bool = Field(description="Whether the attacked picture's top class is the clean picture's again.")


class TypographicInput(BaseModel):
    source: Literal["upload", "dataset"]
    format: str | None = None
    width: int
    height: int
    sha256: str | None = None
    notes: list[str] = Field(default_factory=list)
    dataset: str | None = None
    position: int | None = None
    filename: str | None = None
    model_view: str = Field(description="The clean picture as the model saw it, a PNG data URI.")
    attacked_view: str = Field(description="The attacked picture as the model saw it, a PNG data URI.")


class TypographicResult(BaseModel):
    model: str
    layer: str
    labels: LabelSetOut
    attack: AttackOut
    input: TypographicInput
    before: list[ClassScore]
    after: list[ClassScore]
    top_changed: bool
    units: list[TypographicUnit] = Field(description="The units the attack raised most, most first.")
    silenced: Silenced | None
    rerun: dict[str, Any] = Field(description="The form fields that re-run this attack with the listed units silenced.")
    model_url: str
    layer_url: str


class EvaluationChoice(BaseModel):
    model_id: str
    dataset_id: str
    label_set: str
    rows: int
    url: str


class EvaluationRow(BaseModel):
    target: str
    text: str
    pixel_cover: float = Field(description="Mean share of pixels the attack changed.")
    success: float | None = Field(description="Share of counted pictures whose top class became the target.")
    images: int = Field(description="Pictures counted: those not already classified as the target.")
    setup: str
    names_target: bool = Field(description="Whether the text is the target class's own name.")


class TypographicEvalsPage(BaseModel):
    evaluations: list[EvaluationChoice]
    model: str | None
    dataset: str | None
    labels: str | None
    attacks: list[EvaluationRow]
    search: list[EvaluationRow]
    search_total: int
    missing: list[str]
    model_url: str | None
    probe_url: str
    api_url: str
