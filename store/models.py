"""Tables of the store, as SQLAlchemy 2 typed declarative classes.

The schema itself only changes through Alembic migrations (alembic/versions/); these classes
are what the code reads and writes, and what `alembic revision --autogenerate` compares
against. Every type is portable (JSON, not JSONB; strings checked by CHECK constraints, not
native enums) so that one code path serves SQLite on a laptop and Postgres in deployment.

Blob columns (`*_uri`) hold a blob's content-addressed name (`<sha256>.<ext>`, see store.blobs)
and `jobs.state_uri` a file name in the job-state store, never a location: the configured
stores resolve them, so the data can move without the rows changing.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Explicit constraint names: without them Postgres invents names and SQLite keeps none, so a
# later migration that drops or alters a constraint could not name it on both backends.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MODEL_SOURCES = ("pretrained", "checkpoint", "embedded", "random")
JOB_STATES = ("pending", "running", "done", "failed")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend.

    SQLite has no timezone support and hands back naive datetimes, Postgres hands back aware
    ones; comparing the two (e.g. "is this running job stale?") would raise. Storing UTC and
    re-attaching the zone on the way out makes both backends behave alike.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use datetime.now(timezone.utc)")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Model(Base):
    """A registered vision tower, addressed by a slug the user chose (`rn50x4-openai`)."""

    __tablename__ = "models"
    __table_args__ = (CheckConstraint(_in("source", MODEL_SOURCES), name="source"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    arch: Mapped[str] = mapped_column(String(128))  # open_clip model name
    source: Mapped[str] = mapped_column(String(16))
    pretrained_tag: Mapped[str | None] = mapped_column(String(128))
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    image_size: Mapped[int] = mapped_column(Integer)
    # mean, std, interpolation, resize_mode: what is needed to reproduce the model's input.
    preprocess: Mapped[dict[str, Any]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    layers: Mapped[list[Layer]] = relationship(
        back_populates="model",
        order_by="Layer.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class Layer(Base):
    __tablename__ = "layers"
    __table_args__ = (UniqueConstraint("model_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    # PyTorch module path with the leading `visual.` dropped: `layer4`, `transformer.resblocks.9.mlp`.
    name: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(64))
    units: Mapped[int] = mapped_column(Integer)
    spatial_h: Mapped[int | None] = mapped_column(Integer)
    spatial_w: Mapped[int | None] = mapped_column(Integer)
    has_class_token: Mapped[bool] = mapped_column(Boolean, default=False)
    position: Mapped[int] = mapped_column(Integer)  # order of the layer in the forward pass

    model: Mapped[Model] = relationship(back_populates="layers")

    @property
    def spatial(self) -> tuple[int, int] | None:
        if self.spatial_h is None or self.spatial_w is None:
            return None
        return (self.spatial_h, self.spatial_w)


class Unit(Base):
    """One neuron or channel. Rows exist for every unit so later tables can reference them."""

    __tablename__ = "units"
    __table_args__ = (UniqueConstraint("layer_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(Text)
    mean: Mapped[float | None] = mapped_column(Float)
    std: Mapped[float | None] = mapped_column(Float)
    min: Mapped[float | None] = mapped_column(Float)
    max: Mapped[float | None] = mapped_column(Float)
    fraction_active: Mapped[float | None] = mapped_column(Float)
    histogram: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The unit's second-order direction in the joint embedding space (a float32 .npy blob),
    # kept for live use: decompositions against new text, probes.
    direction_uri: Mapped[str | None] = mapped_column(Text)  # a blob name


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    source_uri: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(64))
    image_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class StoredImage(Base):
    """An image known by its content hash; the bytes live in the blob store.

    Not called `Image` so that it never shadows PIL's Image in the compute code.
    """

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    blob_uri: Mapped[str] = mapped_column(Text)  # a blob name
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)


class DatasetImage(Base):
    """Membership of an image in a dataset, at a stable position (the example index)."""

    __tablename__ = "dataset_images"
    __table_args__ = (
        UniqueConstraint("dataset_id", "position"),
        Index(None, "image_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"))
    position: Mapped[int] = mapped_column(Integer)


class Job(Base):
    """One resumable unit of precompute work: kind x model x layer x dataset x shard.

    `layer` and `dataset_id` are NULL for jobs that span the whole model or need no dataset.
    SQL treats NULLs as distinct in unique constraints, so the repository looks jobs up with
    IS NULL before inserting rather than relying on ON CONFLICT for those.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("kind", "model_id", "layer", "dataset_id", "shard"),
        CheckConstraint(_in("state", JOB_STATES), name="state"),
        Index(None, "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    layer: Mapped[str | None] = mapped_column(String(256))
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    shard: Mapped[int] = mapped_column(Integer, default=0)
    shard_count: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    done_items: Mapped[int] = mapped_column(Integer, default=0)
    total_items: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # Resumption: how many items of the shard are durably accounted for, and the blob holding
    # the job's accumulator state (top-k heaps, running statistics) at that cursor.
    cursor: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    state_uri: Mapped[str | None] = mapped_column(Text)  # a file name inside the job-state store
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


SIGNS = ("top", "bottom")
ANNOTATION_KINDS = ("label", "note")


class DatasetExample(Base):
    """One of a unit's top (most exciting) or bottom (most inhibiting) images in a dataset."""

    __tablename__ = "dataset_examples"
    __table_args__ = (
        UniqueConstraint("unit_id", "dataset_id", "sign", "rank"),
        CheckConstraint(_in("sign", SIGNS), name="sign"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    sign: Mapped[str] = mapped_column(String(8))
    rank: Mapped[int] = mapped_column(Integer)  # 0 = most extreme
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"))
    activation: Mapped[float] = mapped_column(Float)
    # Flat index of the spatial argmax in the layer's (h, w) grid; NULL for pooled layers.
    position: Mapped[int | None] = mapped_column(Integer)
    crop_uri: Mapped[str | None] = mapped_column(Text)  # blob name of the input region around the maximum
    # The input region around the maximum as "left,top,right,bottom,size" (precompute.crop_boxes),
    # cut from the image when a page asks for it; rows written with a stored crop have crop_uri instead.
    crop_box: Mapped[str | None] = mapped_column(String(32))


class BucketSample(Base):
    """Images sampled per activation bucket, for the conditional-probability strip."""

    __tablename__ = "bucket_samples"
    __table_args__ = (UniqueConstraint("unit_id", "dataset_id", "bucket", "slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    bucket: Mapped[int] = mapped_column(Integer)
    slot: Mapped[int] = mapped_column(Integer)
    low: Mapped[float] = mapped_column(Float)  # the bucket's activation range
    high: Mapped[float] = mapped_column(Float)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"))
    activation: Mapped[float] = mapped_column(Float)


class WordList(Base):
    """A list of words rastered as images (e.g. the 10,000 most common English words)."""

    __tablename__ = "word_lists"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    source: Mapped[str] = mapped_column(Text)  # e.g. "wordfreq:en:10000" or a file path
    words: Mapped[list[str]] = mapped_column(JSON)
    font: Mapped[str] = mapped_column(Text)
    font_size: Mapped[int | None] = mapped_column(Integer)
    image_size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WordActivation(Base):
    """A unit's top words when rastered as images."""

    __tablename__ = "word_activations"
    __table_args__ = (UniqueConstraint("unit_id", "word_list_id", "rank"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    word_list_id: Mapped[str] = mapped_column(ForeignKey("word_lists.id", ondelete="CASCADE"))
    rank: Mapped[int] = mapped_column(Integer)
    word: Mapped[str] = mapped_column(Text)
    activation: Mapped[float] = mapped_column(Float)


class WordEmbedding(Base):
    """Image-based word embeddings of one layer: each word's activation vector minus the mean
    over all words, as a (words x units) float32 .npy blob in the word list's order."""

    __tablename__ = "word_embeddings"
    __table_args__ = (UniqueConstraint("layer_id", "word_list_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id", ondelete="CASCADE"))
    word_list_id: Mapped[str] = mapped_column(ForeignKey("word_lists.id", ondelete="CASCADE"))
    vectors_uri: Mapped[str] = mapped_column(Text)  # blob names
    mean_uri: Mapped[str] = mapped_column(Text)


class FeatureViz(Base):
    """A feature visualization image of a unit: plain, a diversity member, or a facet."""

    __tablename__ = "featureviz"
    __table_args__ = (UniqueConstraint("unit_id", "kind", "variant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # "channel" | "neuron" | "diversity" | "facet"
    variant: Mapped[str] = mapped_column(String(64), default="")  # diversity index or facet name
    blob_uri: Mapped[str] = mapped_column(Text)  # a blob name
    final_activation: Mapped[float | None] = mapped_column(Float)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    thumbnail_uri: Mapped[str | None] = mapped_column(Text)  # blob name of a small copy, for grids


class FacetProbe(Base):
    """A linear probe on a layer's mean activations that tells a facet's images (text, faces)
    from generic ones: the `w` of faceted feature visualization. Weights are a float32 .npy blob."""

    __tablename__ = "facet_probes"
    __table_args__ = (UniqueConstraint("layer_id", "facet"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id", ondelete="CASCADE"))
    facet: Mapped[str] = mapped_column(String(64))
    weights_uri: Mapped[str] = mapped_column(Text)  # a blob name
    bias: Mapped[float] = mapped_column(Float)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # source, counts, accuracy
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DirectionSet(Base):
    """A layer's neuron directions in the joint image-text space, over one dataset.

    One blob per layer (an .npz with `units`, `directions`, `mean_effects`, `thresholds`), so a
    live page loads a whole layer in one read; see store/directions.py.
    """

    __tablename__ = "direction_sets"
    __table_args__ = (UniqueConstraint("layer_id", "dataset_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id", ondelete="CASCADE"))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    blob_uri: Mapped[str] = mapped_column(Text)  # a blob name
    paths: Mapped[str] = mapped_column(String(64))  # which contributions the effects include
    dimension: Mapped[int] = mapped_column(Integer)
    image_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TextPool(Base):
    """A pool of texts that sparse decompositions draw from."""

    __tablename__ = "text_pools"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    texts: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Decomposition(Base):
    """One term of a unit's sparse text decomposition (second-order lens)."""

    __tablename__ = "decompositions"
    __table_args__ = (UniqueConstraint("unit_id", "pool_id", "rank"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    pool_id: Mapped[str] = mapped_column(ForeignKey("text_pools.id", ondelete="CASCADE"))
    rank: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    coefficient: Mapped[float] = mapped_column(Float)
    # Cosine between the unit's direction and its whole m-term reconstruction (the same on
    # every term of one decomposition); NULL for rows written before it was recorded.
    score: Mapped[float | None] = mapped_column(Float)


class MaximalText(Base):
    """The text a unit's direction favours most: the token sequence with the largest
    <e(text), r_n> that hill climbing found (the Distill article's "text feature
    visualization"), beside the best single word it started from. One per unit, for the
    direction set of `dataset_id`; a re-run replaces it."""

    __tablename__ = "maximal_texts"
    __table_args__ = (UniqueConstraint("unit_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))  # whose directions
    text: Mapped[str] = mapped_column(Text)
    tokens: Mapped[list[int]] = mapped_column(JSON)  # the tokenizer's ids, without start and end
    score: Mapped[float] = mapped_column(Float)  # <e(text), r_n>, e and r_n of unit length
    start_text: Mapped[str] = mapped_column(Text)  # the best single word (token)
    start_score: Mapped[float] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # length, steps, candidates, starts
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TextEmbedding(Base):
    """A pool's text embeddings under one model (unit length, [texts, d] float32 .npy blob in
    the pool's order), computed once and reused by every decomposition and prompt search."""

    __tablename__ = "text_embeddings"
    __table_args__ = (UniqueConstraint("model_id", "pool_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    pool_id: Mapped[str] = mapped_column(ForeignKey("text_pools.id", ondelete="CASCADE"))
    blob_uri: Mapped[str] = mapped_column(Text)  # a blob name
    texts_sha256: Mapped[str] = mapped_column(String(64))  # of the texts it was computed from
    dimension: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Annotation(Base):
    """A label or note on a unit, by whoever held the API token."""

    __tablename__ = "annotations"
    __table_args__ = (CheckConstraint(_in("kind", ANNOTATION_KINDS), name="kind"), Index(None, "unit_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class EditStamp(Base):
    """One row counting what people have written (labels, notes, collections), bumped in the
    same transaction as each write: a page that shows edits can be reused while it is
    unchanged, in every server process, for the price of reading one integer."""

    __tablename__ = "edit_stamps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    edits: Mapped[int] = mapped_column(Integer, default=0)


class Collection(Base):
    """A named list of units (a neuron family), with a shareable page."""

    __tablename__ = "collections"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class CollectionUnit(Base):
    __tablename__ = "collection_units"
    __table_args__ = (UniqueConstraint("collection_id", "unit_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[str] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    note: Mapped[str] = mapped_column(Text, default="")


class ApiToken(Base):
    """A write token. Only its SHA-256 is stored; the token itself is shown once at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))  # who holds it; recorded as the author
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to tell tokens apart
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


TYPOGRAPHIC_KINDS = ("attack", "search")


class TypographicResult(Base):
    """One row of a typographic evaluation (the Distill article's Figure 16): an attack text and
    its target class, evaluated on a dataset against a label set. `kind` says whether the
    (target, text) pair was asked for (`attack`) or the search found the target (`search`)."""

    __tablename__ = "typographic_results"
    __table_args__ = (
        UniqueConstraint("model_id", "dataset_id", "label_set", "kind", "text"),
        CheckConstraint(_in("kind", TYPOGRAPHIC_KINDS), name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    label_set: Mapped[str] = mapped_column(String(64))
    setup: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    success: Mapped[float | None] = mapped_column(Float)
    pixel_cover: Mapped[float] = mapped_column(Float)
    images: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
