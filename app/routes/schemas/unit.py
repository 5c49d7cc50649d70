"""A unit's page."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.routes.schemas.common import (
    THUMBNAIL_KIND_DESCRIPTION, THUMBNAIL_URL_DESCRIPTION, AnnotationOut, Cell, ModelRef, ThumbnailKind,
)
from app.routes.schemas.words import WordListChoice


class Stats(BaseModel):
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    fraction_active: float | None


class Histogram(BaseModel):
    edges: list[float] = Field(description="Bin edges, one more than counts.")
    counts: list[float]
    underflow: float | None = Field(None, description="Values below the first edge, where counted.")
    overflow: float | None = Field(None, description="Values above the last edge, where counted.")


class FeatureVizImage(BaseModel):
    kind: str = Field(description="`channel`, `neuron`, `diversity` or `facet`.")
    variant: str = Field(description="Diversity member or facet name; empty for the main image.")
    image_url: str | None
    final_activation: float | None
    parameters: dict[str, Any]


class FeatureVizGroups(BaseModel):
    main: list[FeatureVizImage]
    diversity: list[FeatureVizImage]
    facets: list[FeatureVizImage]
    other: list[FeatureVizImage]


class Example(BaseModel):
    rank: int
    activation: float
    image_url: str | None
    crop_url: str | None = Field(description="The region around the maximum, if stored.")
    width: int
    height: int
    position: int | None = Field(description="Flat index of the spatial maximum in the layer's grid.")
    cell: Cell | None


class ExampleGroup(BaseModel):
    dataset: str
    top: list[Example]
    bottom: list[Example]


class BucketSampleOut(BaseModel):
    slot: int
    activation: float
    image_url: str | None


class Bucket(BaseModel):
    bucket: int
    low: float
    high: float
    samples: list[BucketSampleOut]


class BucketGroup(BaseModel):
    dataset: str
    buckets: list[Bucket]


class WordOut(BaseModel):
    rank: int
    word: str
    activation: float


class WordGroup(BaseModel):
    word_list: str
    words: list[WordOut]


class Term(BaseModel):
    rank: int
    text: str
    coefficient: float = Field(description="Signed weight of the text in the unit's sparse decomposition.")


class TermGroup(BaseModel):
    pool: str
    score: float | None = Field(None, description="Reconstruction score: cosine between the unit's direction and the sum of "
                                                  "its terms (None for decompositions stored without one).")
    terms: list[Term]


class MaximalTextOut(BaseModel):
    text: str = Field(description="The token sequence whose text embedding has the largest dot product with the unit's "
                                  "direction that hill climbing found (the text feature visualization).")
    tokens: list[int] = Field(description="Its token ids, without the start and end tokens.")
    score: float = Field(description="<e(text), r>: the text's unit-length embedding against the unit's unit-length direction.")
    start_text: str = Field(description="The best single word (token), where the climb started.")
    start_score: float = Field(description="<e(start_text), r>.")
    steps: int = Field(description="Hill-climbing steps taken.")
    parameters: dict[str, Any] = Field(description="length, steps, candidates and starts of the climb.")
    dataset: str = Field(description="The dataset the unit's direction was computed over.")


class NearestUnit(BaseModel):
    index: int
    similarity: float
    label: str | None
    thumbnail_url: str | None = Field(description=THUMBNAIL_URL_DESCRIPTION)
    thumbnail_kind: ThumbnailKind | None = Field(None, description=THUMBNAIL_KIND_DESCRIPTION)
    url: str
    api_url: str


class Nearest(BaseModel):
    basis: Literal["direction", "word_embedding", "decomposition"] | None = Field(description="What was compared.")
    explanation: str
    units: list[NearestUnit]


class CollectionRef(BaseModel):
    id: str
    title: str
    url: str
    api_url: str


class UnitLink(BaseModel):
    index: int
    url: str
    api_url: str


class UnitLayerRef(BaseModel):
    name: str
    kind: str
    units: int
    spatial: list[int] | None
    url: str
    api_url: str


class UnitPage(BaseModel):
    id: str = Field(description="model/layer/index")
    model: ModelRef
    layer: UnitLayerRef
    index: int
    label: str | None
    stats: Stats | None
    histogram: Histogram | None
    featureviz: FeatureVizGroups
    examples: list[ExampleGroup]
    buckets: list[BucketGroup] = Field(description="Samples per activation bucket: the conditional-probability strip.")
    words: list[WordGroup] = Field(description="Top words per word list, the default list first; only the list asked for "
                                   "with `?word_list=`.")
    word_list: str | None = Field(None, description="The word list shown first on the page.")
    word_lists: list[WordListChoice] = Field(
        default_factory=list, description="This unit's word lists, the default first: the synthetic world's vocabulary "
        "for a toy model, the common English words for a real one.")
    decomposition: list[TermGroup]
    maximal_text: MaximalTextOut | None = Field(None, description="The unit's maximal text, or null where it has not been "
                                                "computed (`microscope precompute maxtext`).")
    has_direction: bool
    nearest: Nearest
    annotations: list[AnnotationOut]
    collections: list[CollectionRef]
    prev: UnitLink | None
    next: UnitLink | None
    missing: list[str] = Field(description="What has not been computed for this unit.")
    url: str
    api_url: str
