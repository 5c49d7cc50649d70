"""Response shapes of the v1 API, for validation and for the OpenAPI document at /docs.

Within v1 changes are additive only: new optional fields may appear, none disappear.

One module per page, like the builders in app.pages; every shape is importable from here.
"""

from app.routes.schemas.common import (
    ErrorBody, UnprocessableBody, Health, Pagination, Computed, ModelRef, Cell, AnnotationOut,
)
from app.routes.schemas.models import JobProgress, LayerInfo, ModelSummary, ModelList, ModelDetail
from app.routes.schemas.layer import UnitCard, LayerPage
from app.routes.schemas.unit import (
    Stats, Histogram, FeatureVizImage, FeatureVizGroups, Example, ExampleGroup, BucketSampleOut, Bucket,
    BucketGroup, WordOut, WordGroup, Term, TermGroup, NearestUnit, Nearest, CollectionRef, UnitLink,
    UnitLayerRef, UnitPage,
)
from app.routes.schemas.search import SearchResult, ModelChoice, SearchPage, PromptResult, PromptPage
from app.routes.schemas.words import EmbeddingChoice, WordTerm, WordResult, WordsPage
from app.routes.schemas.collections import CollectionSummary, CollectionList, CollectionMember, CollectionDetail
from app.routes.schemas.jobs import JobOut, JobsPage
from app.routes.schemas.probe import (
    ProbeModelChoice, DatasetChoice, DatasetImageOut, ProbeForm, ProbeUnit, ProbeInput, ProbeResult,
)
from app.routes.schemas.typographic import TypographicEvalsPage, TypographicForm, TypographicResult
from app.routes.schemas.writes import TextIn, LabelOut, CollectionIn, CollectionPatch, CollectionUnitIn, Deleted

__all__ = [
    "TypographicEvalsPage",
    "TypographicForm",
    "TypographicResult",
    "ErrorBody",
    "UnprocessableBody",
    "Health",
    "Pagination",
    "Computed",
    "ModelRef",
    "Cell",
    "AnnotationOut",
    "JobProgress",
    "LayerInfo",
    "ModelSummary",
    "ModelList",
    "ModelDetail",
    "UnitCard",
    "LayerPage",
    "Stats",
    "Histogram",
    "FeatureVizImage",
    "FeatureVizGroups",
    "Example",
    "ExampleGroup",
    "BucketSampleOut",
    "Bucket",
    "BucketGroup",
    "WordOut",
    "WordGroup",
    "Term",
    "TermGroup",
    "NearestUnit",
    "Nearest",
    "CollectionRef",
    "UnitLink",
    "UnitLayerRef",
    "UnitPage",
    "SearchResult",
    "ModelChoice",
    "SearchPage",
    "PromptResult",
    "PromptPage",
    "EmbeddingChoice",
    "WordTerm",
    "WordResult",
    "WordsPage",
    "CollectionSummary",
    "CollectionList",
    "CollectionMember",
    "CollectionDetail",
    "JobOut",
    "JobsPage",
    "ProbeModelChoice",
    "DatasetChoice",
    "DatasetImageOut",
    "ProbeForm",
    "ProbeUnit",
    "ProbeInput",
    "ProbeResult",
    "TextIn",
    "LabelOut",
    "CollectionIn",
    "CollectionPatch",
    "CollectionUnitIn",
    "Deleted",
]
