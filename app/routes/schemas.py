"""Response shapes of the v1 API, for validation and for the OpenAPI document at /docs.

Within v1 changes are additive only: new optional fields may appear, none disappear.
"""

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


class ModelRef(BaseModel):
    id: str
    arch: str | None = None
    url: str
    api_url: str


class UnitCard(BaseModel):
    index: int
    label: str | None
    top_words: list[str]
    max: float | None
    mean: float | None
    fraction_active: float | None
    thumbnail_url: str | None
    thumbnail_kind: Literal["featureviz", "example"] | None = Field(description="What the thumbnail shows.")
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


class Cell(BaseModel):
    row: int
    col: int
    x: float = Field(description="Left edge of the cell, percent of the image width.")
    y: float
    w: float
    h: float


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
    terms: list[Term]


class NearestUnit(BaseModel):
    index: int
    similarity: float
    label: str | None
    thumbnail_url: str | None
    url: str
    api_url: str


class Nearest(BaseModel):
    basis: Literal["direction", "word_embedding", "decomposition"] | None = Field(description="What was compared.")
    explanation: str
    units: list[NearestUnit]


class AnnotationOut(BaseModel):
    id: int
    kind: Literal["label", "note"]
    text: str
    author: str
    created_at: str | None
    updated_at: str | None


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
    words: list[WordGroup]
    decomposition: list[TermGroup]
    has_direction: bool
    nearest: Nearest
    annotations: list[AnnotationOut]
    collections: list[CollectionRef]
    prev: UnitLink | None
    next: UnitLink | None
    missing: list[str] = Field(description="What has not been computed for this unit.")
    url: str
    api_url: str


class SearchResult(BaseModel):
    model: str
    layer: str
    index: int
    label: str | None
    matched: Literal["label", "note", "word", "decomposition"]
    match_text: str
    thumbnail_url: str | None
    url: str
    api_url: str


class ModelChoice(BaseModel):
    id: str
    layers: list[str]


class SearchPage(BaseModel):
    q: str
    model: str | None
    layer: str | None
    results: list[SearchResult]
    pagination: Pagination
    models: list[ModelChoice]
    api_url: str


class PromptResult(BaseModel):
    model: str
    layer: str
    index: int
    similarity: float
    label: str | None
    thumbnail_url: str | None
    url: str
    api_url: str


class PromptPage(BaseModel):
    prompt: str
    model: str
    layer: str | None
    layers_searched: list[str]
    results: list[PromptResult]
    missing: list[str]


class EmbeddingChoice(BaseModel):
    model: str
    layer: str
    word_list: str
    url: str


class WordTerm(BaseModel):
    sign: Literal["+", "-"]
    word: str


class WordResult(BaseModel):
    word: str
    similarity: float


class WordsPage(BaseModel):
    q: str
    available: list[EmbeddingChoice]
    model: str | None
    layer: str | None
    word_list: str | None
    terms: list[WordTerm]
    results: list[WordResult]
    examples: list[str] = Field(description="A few words of the list, to start from.")
    missing: list[str]
    api_url: str


class CollectionSummary(BaseModel):
    id: str
    title: str
    description: str
    author: str
    unit_count: int
    created_at: str | None
    updated_at: str | None
    url: str
    api_url: str


class CollectionList(BaseModel):
    collections: list[CollectionSummary]
    pagination: Pagination
    api_url: str


class CollectionMember(BaseModel):
    model: str
    layer: str
    index: int
    label: str | None
    note: str
    top_words: list[str]
    thumbnail_url: str | None
    url: str
    api_url: str


class CollectionDetail(BaseModel):
    id: str
    title: str
    description: str
    author: str
    created_at: str | None
    updated_at: str | None
    units: list[CollectionMember]
    pagination: Pagination
    url: str
    api_url: str


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
    thumbnail_url: str | None
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


# -- writes --------------------------------------------------------------------------------------
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
