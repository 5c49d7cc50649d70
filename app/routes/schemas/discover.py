"""/discover and /cues: concepts a picture's neurons add up to, zero-shot segmentation, ablations,
and spurious cues for a class pair."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.routes.schemas.common import Pagination
from app.routes.schemas.probe import DatasetChoice, DatasetImageOut, ProbeModelChoice


class DiscoverFormOut(BaseModel):
    models: list[ProbeModelChoice]
    model: str | None
    layer: str | None = Field(description="The last of the concept layers the form starts with (the last one with "
                                    "directions where none has decompositions).")
    layers: list[str] = Field(default_factory=list, description="The concept layers the form starts with: those asked for, "
                              "else every layer with directions and decompositions.")
    direction_layers: list[str] = Field(description="The model's layers with stored neuron directions.")
    concept_layers: list[str] = Field(default_factory=list, description="The model's layers with stored directions and "
                                      "decompositions: the layers concepts can be discovered on.")
    datasets: list[DatasetChoice]
    dataset: str | None
    dataset_images: list[DatasetImageOut]
    pagination: Pagination
    limits: dict[str, Any]
    label_sets: list[str]
    label_set: str
    class_name: str
    api_url: str


class ClassScoreOut(BaseModel):
    label: str
    index: int
    probability: float


class UnitRef(BaseModel):
    layer: str
    unit: int
    ref: str = Field(description="layer:index, as `ablate` takes it (transformer.resblocks.3.mlp:17).")
    label: str | None = None
    thumbnail_url: str | None = None
    thumbnail_kind: str | None = None
    url: str
    api_url: str


class ActiveNeuron(UnitRef):
    norm: float = Field(description="||phi_n(I) - b_n||, the neuron's effect on this picture away from its mean.")
    threshold: float = Field(description="The neuron's significance threshold (its 100th-largest norm over the dataset).")


class ConceptNeuron(UnitRef):
    coefficient: float = Field(description="The text's coefficient in the neuron's sparse decomposition.")
    norm: float
    contribution: float = Field(description="coefficient x norm: this neuron's share of the text's score.")


class ConceptText(BaseModel):
    text: str
    score: float = Field(description="Sum over the active neurons of coefficient(text) x ||phi_n(I) - b_n||.")
    neurons: list[ConceptNeuron]


class ConceptsOut(BaseModel):
    layer: str = Field(description="The last of `layers` (the only one when concepts come from one layer).")
    layers: list[str] = Field(default_factory=list, description="The concept layers whose active neurons add up, "
                              "in the model's order.")
    active_count: int
    active: list[ActiveNeuron]
    texts: list[ConceptText]


class SegmentationOut(BaseModel):
    heat_map: str = Field(description="A PNG data URL: the min-max normalised mean map of the aligned neurons, as a colour overlay.")
    mask: str = Field(description="A PNG data URL: white where the normalised map is at least 0.5.")
    grid: list[int] = Field(description="The layers' spatial grid (h, w) before upsampling.")
    size: list[int] = Field(description="The size (h, w) of the picture as the model saw it.")
    mask_fraction: float


class DiscoverState(BaseModel):
    prediction: list[ClassScoreOut]
    concepts: ConceptsOut | None = None
    segmentation: SegmentationOut | None = None


class SegmentationNeuron(UnitRef):
    alignment: float = Field(description="<r_n, e(class)>: the neuron's direction against the class's text embedding.")


class AblationGroup(BaseModel):
    layer: str
    units: list[int]


class AblationOut(BaseModel):
    layer: str = Field(description="The layer of the silenced units; with units in several layers, the first of `groups`.")
    units: list[int] = Field(description="The silenced units of `layer`.")
    mode: str = Field(description="'zero' or 'mean' (each unit set to its dataset mean).")
    groups: list[AblationGroup] = Field(default_factory=list, description="The silenced units by layer, in the model's "
                                        "order; all are silenced in the same forward pass.")
    refs: list[str] = Field(default_factory=list, description="Every silenced unit as layer:index.")
    units_info: list[UnitRef] = Field(description="The first 64 silenced units, in the order of `refs`.")
    prediction_changed: bool


class DiscoverResultOut(BaseModel):
    model: str
    layer: str = Field(description="The last of the concept layers (the only one when concepts come from one layer).")
    layers: list[str] = Field(default_factory=list, description="The concept layers, in the model's order.")
    labels: str
    input: dict[str, Any]
    class_name: str | None
    segmentation_layers: list[str]
    segmentation_neurons: list[SegmentationNeuron] = Field(description="The most aligned of the segmentation's neurons.")
    segmentation_neuron_count: int
    before: DiscoverState
    after: DiscoverState | None = Field(description="The same with the ablation in force; null without one.")
    ablation: AblationOut | None
    rerun: dict[str, Any]
    model_url: str
    layer_url: str
