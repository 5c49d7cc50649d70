"""Reads for the pages and the API: everything the browser shows, as plain rows.

Kept apart from store.repository (registration and jobs, shared with the precompute
workers) so the web's read paths can be tuned for the hot pages (the unit page above all)
without touching the writers' code. Functions here return plain dicts and tuples built
from Core selects, never ORM objects: the pages turn them into JSON as they are, and
skipping the identity map is most of what keeps the unit page fast.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Literal, NamedTuple

from sqlalchemy import and_, bindparam, case, func, literal, literal_column, or_, select, union_all
from sqlalchemy.orm import Session

from precompute.words import trained_on_world

from store.models import (
    Annotation,
    BucketSample,
    Collection,
    CollectionUnit,
    Dataset,
    DatasetExample,
    DatasetImage,
    DirectionSet,
    Decomposition,
    EditStamp,
    FeatureViz,
    Job,
    Layer,
    Model,
    StoredImage,
    Unit,
    WordActivation,
    WordEmbedding,
    WordList,
)

# Feature visualizations that stand for the unit as a whole (the rest are diversity members
# and facets); "channel" for spatial layers (the mean over the map), "neuron" for one position.
MAIN_FEATUREVIZ_KINDS = ("channel", "neuron")

# What the pages report as computed, per layer: a name and how to count units that have it.
COVERAGE_KINDS = ("statistics", "featureviz", "examples", "words", "decomposition", "directions", "labels")


def _rows(session: Session, stmt: Any) -> list[dict[str, Any]]:
    return [dict(row) for row in session.execute(stmt).mappings()]


def escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# -- models and layers ---------------------------------------------------------------------------
def count_models(session: Session) -> int:
    return session.execute(select(func.count(Model.id))).scalar_one()


def models_page(session: Session, offset: int, limit: int) -> list[dict[str, Any]]:
    return _rows(session, select(Model.__table__).order_by(Model.id).offset(offset).limit(limit))


def model_row(session: Session, model_id: str) -> dict[str, Any] | None:
    row = session.execute(select(Model.__table__).where(Model.id == model_id)).mappings().first()
    return dict(row) if row else None


def layers_of(session: Session, model_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    if not model_ids:
        return {}
    stmt = select(Layer.__table__).where(Layer.model_id.in_(model_ids)).order_by(Layer.position, Layer.name)
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in _rows(session, stmt):
        out[row["model_id"]].append(row)
    return out


def layer_row(session: Session, model_id: str, name: str) -> dict[str, Any] | None:
    stmt = select(Layer.__table__).where(Layer.model_id == model_id, Layer.name == name)
    row = session.execute(stmt).mappings().first()
    return dict(row) if row else None


def coverage(session: Session, layer_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Per layer: how many units have each kind of result (COVERAGE_KINDS).

    Each count reads one row per unit (rank 0, or the main visualization), so it stays cheap
    however many examples or words each unit has.
    """
    result: dict[int, dict[str, int]] = {lid: dict.fromkeys(COVERAGE_KINDS, 0) for lid in layer_ids}
    if not layer_ids:
        return result
    in_layers = Unit.layer_id.in_(layer_ids)

    def per_layer(kind: str, stmt: Any) -> None:
        for layer_id, count in session.execute(stmt).all():
            result[layer_id][kind] = count

    base = select(Unit.layer_id, func.count(Unit.id)).where(in_layers).group_by(Unit.layer_id)
    per_layer("statistics", base.where(Unit.max.is_not(None)))
    # a layer's directions are one set (store.directions) covering its units
    per_layer("directions", select(DirectionSet.layer_id, Layer.units).join(Layer, Layer.id == DirectionSet.layer_id)
              .where(DirectionSet.layer_id.in_(layer_ids)).distinct())
    per_layer("labels", base.where(Unit.label.is_not(None)))
    joined = {
        "featureviz": (FeatureViz, and_(FeatureViz.kind.in_(MAIN_FEATUREVIZ_KINDS), FeatureViz.variant == "")),
        "examples": (DatasetExample, and_(DatasetExample.sign == "top", DatasetExample.rank == 0)),
        "words": (WordActivation, WordActivation.rank == 0),
        "decomposition": (Decomposition, Decomposition.rank == 0),
    }
    for kind, (table, where) in joined.items():
        stmt = (
            select(Unit.layer_id, func.count(func.distinct(table.unit_id)))
            .join(table, table.unit_id == Unit.id)
            .where(in_layers, where)
            .group_by(Unit.layer_id)
        )
        per_layer(kind, stmt)
    return result


def job_progress(session: Session, model_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Jobs of these models summed per (model, layer, kind): shards by state and item counts."""
    if not model_ids:
        return []
    stmt = (
        select(
            Job.model_id,
            Job.layer,
            Job.kind,
            Job.state,
            func.count(Job.id).label("shards"),
            func.sum(Job.done_items).label("done_items"),
            func.sum(Job.total_items).label("total_items"),
        )
        .where(Job.model_id.in_(model_ids))
        .group_by(Job.model_id, Job.layer, Job.kind, Job.state)
        .order_by(Job.model_id, Job.layer, Job.kind)
    )
    return _rows(session, stmt)


# -- units ---------------------------------------------------------------------------------------
UNIT_SORTS = ("index", "label", "activation")


def units_page(session: Session, layer_id: int, sort: str, offset: int, limit: int) -> list[dict[str, Any]]:
    if sort not in UNIT_SORTS:
        raise ValueError(f"sort must be one of {UNIT_SORTS}")
    order: list[Any]
    if sort == "label":  # labelled units first, alphabetically; then the rest by index
        order = [Unit.label.is_(None), func.lower(Unit.label), Unit.index]
    elif sort == "activation":  # strongest maximum first; units without statistics last
        order = [Unit.max.is_(None), Unit.max.desc(), Unit.index]
    else:
        order = [Unit.index]
    stmt = (
        select(Unit.id, Unit.index, Unit.label, Unit.max, Unit.mean, Unit.std, Unit.min, Unit.fraction_active)
        .where(Unit.layer_id == layer_id)
        .order_by(*order)
        .offset(offset)
        .limit(limit)
    )
    return _rows(session, stmt)


def count_layer_units(session: Session, layer_id: int) -> int:
    return session.execute(select(func.count(Unit.id)).where(Unit.layer_id == layer_id)).scalar_one()


_UNIT_CORE = (
    select(
        Unit.id,
        Unit.index,
        Unit.label,
        Unit.mean,
        Unit.std,
        Unit.min,
        Unit.max,
        Unit.fraction_active,
        Unit.histogram,
        Unit.direction_uri,
        Unit.layer_id,
        Layer.kind.label("layer_kind"),
        Layer.units.label("layer_units"),
        Layer.spatial_h,
        Layer.spatial_w,
    )
    .join(Layer, Layer.id == Unit.layer_id)
    .where(
        Layer.model_id == bindparam("model_id"), Layer.name == bindparam("layer_name"), Unit.index == bindparam("index")
    )
)


def unit_core(session: Session, model_id: str, layer_name: str, index: int) -> dict[str, Any] | None:
    """The unit row with what the unit page needs of its layer, in one query (built once:
    the unit page runs it on every view)."""
    row = session.execute(_UNIT_CORE, {"model_id": model_id, "layer_name": layer_name, "index": index}).mappings().first()
    return dict(row) if row else None


def units_by_ids(session: Session, unit_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    ids = list(unit_ids)
    if not ids:
        return {}
    stmt = (
        select(Unit.id, Unit.index, Unit.label, Unit.max, Layer.name.label("layer"), Layer.model_id)
        .join(Layer, Layer.id == Unit.layer_id)
        .where(Unit.id.in_(ids))
    )
    return {row["id"]: row for row in _rows(session, stmt)}


def unit_ids_by_index(session: Session, layer_id: int, indices: Iterable[int]) -> dict[int, dict[str, Any]]:
    idx = list(indices)
    if not idx:
        return {}
    stmt = select(Unit.id, Unit.index, Unit.label).where(Unit.layer_id == layer_id, Unit.index.in_(idx))
    return {row["index"]: row for row in _rows(session, stmt)}


def unit_means(session: Session, layer_id: int, indices: Iterable[int]) -> dict[int, float | None]:
    """Each listed unit's stored mean activation (None where statistics were not computed)."""
    idx = list(indices)
    if not idx:
        return {}
    stmt = select(Unit.index, Unit.mean).where(Unit.layer_id == layer_id, Unit.index.in_(idx))
    return {int(row["index"]): row["mean"] for row in _rows(session, stmt)}


def main_featureviz(session: Session, unit_ids: Sequence[int]) -> dict[int, str]:
    """Each unit's main feature visualization blob (channel preferred over neuron)."""
    if not unit_ids:
        return {}
    stmt = (
        select(FeatureViz.unit_id, FeatureViz.kind, FeatureViz.blob_uri)
        .where(FeatureViz.unit_id.in_(unit_ids), FeatureViz.kind.in_(MAIN_FEATUREVIZ_KINDS), FeatureViz.variant == "")
        .order_by(FeatureViz.unit_id, FeatureViz.kind)  # "channel" sorts before "neuron"
    )
    out: dict[int, str] = {}
    for unit_id, _kind, uri in session.execute(stmt).all():
        out.setdefault(unit_id, uri)
    return out


class Thumbnail(NamedTuple):
    """The picture that stands for a unit wherever it is listed, and what it shows."""

    blob_uri: str
    kind: Literal["featureviz", "example"]
    # An example without a stored crop: its crop box ("left,top,right,bottom,size"), cut from
    # the image `blob_uri` as `model_id` sees it when the page asks (see precompute.crop_boxes).
    crop_box: str | None = None
    model_id: str | None = None


# Candidates for a unit's thumbnail, best first: the channel visualization, the neuron one,
# then the strongest dataset example of each dataset (its crop around the maximum if stored).
_THUMBNAIL_CHANNEL, _THUMBNAIL_NEURON, _THUMBNAIL_EXAMPLE = 0, 1, 2


def unit_thumbnails(session: Session, unit_ids: Iterable[int]) -> dict[int, Thumbnail]:
    """Each unit's thumbnail: its main feature visualization, else its strongest dataset
    example. One statement for any number of units; units with neither are left out."""
    ids = sorted(set(unit_ids))
    if not ids:
        return {}
    featureviz = select(
        FeatureViz.unit_id,
        func.coalesce(FeatureViz.thumbnail_uri, FeatureViz.blob_uri).label("blob_uri"),
        case((FeatureViz.kind == "channel", literal_column(str(_THUMBNAIL_CHANNEL))),
             else_=literal_column(str(_THUMBNAIL_NEURON))).label("preference"),
        literal_column("''").label("dataset_id"),
        literal_column("NULL").label("crop_box"),
        literal_column("NULL").label("model_id"),
    ).where(FeatureViz.unit_id.in_(ids), FeatureViz.kind.in_(MAIN_FEATUREVIZ_KINDS), FeatureViz.variant == "")
    examples = (
        select(
            DatasetExample.unit_id,
            func.coalesce(DatasetExample.crop_uri, StoredImage.blob_uri),
            literal_column(str(_THUMBNAIL_EXAMPLE)),
            DatasetExample.dataset_id,
            case((DatasetExample.crop_uri.is_(None), DatasetExample.crop_box)),
            Layer.model_id,
        )
        .join(StoredImage, StoredImage.id == DatasetExample.image_id)
        .join(Unit, Unit.id == DatasetExample.unit_id)
        .join(Layer, Layer.id == Unit.layer_id)
        .where(DatasetExample.unit_id.in_(ids), DatasetExample.sign == "top", DatasetExample.rank == 0)
    )
    candidates = union_all(featureviz, examples).subquery()
    stmt = select(candidates.c.unit_id, candidates.c.blob_uri, candidates.c.preference, candidates.c.crop_box,
                  candidates.c.model_id).order_by(candidates.c.unit_id, candidates.c.preference, candidates.c.dataset_id)
    out: dict[int, Thumbnail] = {}
    for unit_id, uri, preference, crop_box, model_id in session.execute(stmt).all():
        if unit_id not in out and uri:
            example = preference == _THUMBNAIL_EXAMPLE
            out[unit_id] = Thumbnail(uri, "example" if example else "featureviz", crop_box if example else None,
                                     model_id if example else None)
    return out


def _by_list(list_order: Sequence[str]) -> list[Any]:
    """ORDER BY terms putting word lists in `list_order` (the order pages offer them), any
    other list after them, by id."""
    ranked = [case({list_id: rank for rank, list_id in enumerate(list_order)}, value=WordActivation.word_list_id,
                   else_=len(list_order))] if list_order else []
    return [*ranked, WordActivation.word_list_id]


def word_lists_of_units(session: Session, unit_ids: Sequence[int]) -> list[str]:
    """The ids of the word lists these units have top words in, by id."""
    if not unit_ids:
        return []
    stmt = select(WordActivation.word_list_id).where(WordActivation.unit_id.in_(unit_ids)).distinct()
    return sorted(session.execute(stmt).scalars())


def top_words(session: Session, unit_ids: Sequence[int], per_unit: int = 3, list_order: Sequence[str] = ()) -> dict[int, list[str]]:
    """Each unit's first `per_unit` top words, those of its first word list in `list_order` first."""
    if not unit_ids:
        return {}
    stmt = (
        select(WordActivation.unit_id, WordActivation.word)
        .where(WordActivation.unit_id.in_(unit_ids), WordActivation.rank < per_unit)
        .order_by(WordActivation.unit_id, *_by_list(list_order), WordActivation.rank)
    )
    out: dict[int, list[str]] = defaultdict(list)
    for unit_id, word in session.execute(stmt).all():
        if len(out[unit_id]) < per_unit and word not in out[unit_id]:
            out[unit_id].append(word)
    return dict(out)


def featureviz_of(session: Session, unit_id: int) -> list[dict[str, Any]]:
    stmt = (
        select(FeatureViz.kind, FeatureViz.variant, FeatureViz.blob_uri, FeatureViz.final_activation, FeatureViz.parameters)
        .where(FeatureViz.unit_id == unit_id)
        .order_by(FeatureViz.kind, FeatureViz.variant)
    )
    return _rows(session, stmt)


def examples_of(session: Session, unit_id: int) -> list[dict[str, Any]]:
    stmt = (
        select(
            DatasetExample.dataset_id,
            DatasetExample.sign,
            DatasetExample.rank,
            DatasetExample.activation,
            DatasetExample.position,
            DatasetExample.crop_uri,
            DatasetExample.crop_box,
            StoredImage.blob_uri,
            StoredImage.width,
            StoredImage.height,
        )
        .join(StoredImage, StoredImage.id == DatasetExample.image_id)
        .where(DatasetExample.unit_id == unit_id)
        .order_by(DatasetExample.dataset_id, DatasetExample.sign.desc(), DatasetExample.rank)  # top before bottom
    )
    return _rows(session, stmt)


def buckets_of(session: Session, unit_id: int) -> list[dict[str, Any]]:
    stmt = (
        select(
            BucketSample.dataset_id,
            BucketSample.bucket,
            BucketSample.slot,
            BucketSample.low,
            BucketSample.high,
            BucketSample.activation,
            StoredImage.blob_uri,
        )
        .join(StoredImage, StoredImage.id == BucketSample.image_id)
        .where(BucketSample.unit_id == unit_id)
        .order_by(BucketSample.dataset_id, BucketSample.bucket, BucketSample.slot)
    )
    return _rows(session, stmt)


def words_of(session: Session, unit_id: int) -> list[dict[str, Any]]:
    stmt = (
        select(WordActivation.word_list_id, WordActivation.rank, WordActivation.word, WordActivation.activation)
        .where(WordActivation.unit_id == unit_id)
        .order_by(WordActivation.word_list_id, WordActivation.rank)
    )
    return _rows(session, stmt)


def decomposition_of(session: Session, unit_id: int) -> list[dict[str, Any]]:
    stmt = (
        select(Decomposition.pool_id, Decomposition.rank, Decomposition.text, Decomposition.coefficient,
               Decomposition.score)
        .where(Decomposition.unit_id == unit_id)
        .order_by(Decomposition.pool_id, Decomposition.rank)
    )
    return _rows(session, stmt)


# Read on every unit page view: built once, executed with the unit's id.
_ANNOTATIONS_OF = (
    select(Annotation.id, Annotation.kind, Annotation.text, Annotation.author, Annotation.created_at, Annotation.updated_at)
    .where(Annotation.unit_id == bindparam("unit_id"))
    .order_by(Annotation.created_at.desc(), Annotation.id.desc())
)
_COLLECTIONS_OF = (
    select(Collection.id, Collection.title)
    .join(CollectionUnit, CollectionUnit.collection_id == Collection.id)
    .where(CollectionUnit.unit_id == bindparam("unit_id"))
    .order_by(Collection.title)
)


_RESULTS_GENERATION = select(
    func.count(Job.id), func.coalesce(func.sum(Job.cursor), 0), func.coalesce(func.sum(Job.done_items), 0), func.max(Job.updated_at)
)


_GENERATION = _RESULTS_GENERATION.subquery("generation")
# How many edits (labels, notes, collections) the store has taken: every write in
# store.annotations adds one in its own transaction, so a page showing edits that was built
# under the same stamp (and results generation) is still right. Read it before the edits.
_EDITS = select(EditStamp.edits).where(EditStamp.id == 1).scalar_subquery().label("edits")
_UNIT_CORE_AND_STAMPS = _UNIT_CORE.add_columns(*_GENERATION.c, _EDITS).join(_GENERATION, literal(True))


def unit_core_and_stamps(
    session: Session, model_id: str, layer_name: str, index: int
) -> tuple[dict[str, Any] | None, tuple[Any, ...] | None, int | None]:
    """`unit_core`, `results_generation` and the edit stamp (`_EDITS`) in one round trip (the unit page's
    first read, and all of it when the rendered page is cached); (None, None, None) when there
    is no such unit."""
    row = session.execute(_UNIT_CORE_AND_STAMPS, {"model_id": model_id, "layer_name": layer_name, "index": index}).first()
    if row is None:
        return None, None, None
    width = len(_GENERATION.c)
    names = list(_UNIT_CORE.selected_columns.keys())
    return dict(zip(names, row[: -width - 1])), tuple(row[-width - 1:-1]), row[-1]


def results_generation(session: Session) -> tuple[Any, ...]:
    """A fingerprint of what the precompute jobs wrote, cheap enough to read on every view.

    The job loop commits a job's results in the same transaction as its row's cursor, progress
    and heartbeat, and resets and deletions change the row too; so any change to the results
    changes this, in every server process at once. Read it before the results it vouches for.
    """
    return tuple(session.execute(_RESULTS_GENERATION).one())


def annotations_of(session: Session, unit_id: int) -> list[dict[str, Any]]:
    return [dict(row) for row in session.execute(_ANNOTATIONS_OF, {"unit_id": unit_id}).mappings()]


def collections_of(session: Session, unit_id: int) -> list[dict[str, Any]]:
    return [dict(row) for row in session.execute(_COLLECTIONS_OF, {"unit_id": unit_id}).mappings()]


def layer_directions(session: Session, layer_id: int) -> list[tuple[int, int, str]]:
    """(unit id, index, direction URI) of the layer's units that have a stored direction."""
    stmt = (
        select(Unit.id, Unit.index, Unit.direction_uri)
        .where(Unit.layer_id == layer_id, Unit.direction_uri.is_not(None))
        .order_by(Unit.index)
    )
    return [tuple(row) for row in session.execute(stmt).all()]  # type: ignore[misc]


def any_directions(session: Session, layer_ids: Sequence[int]) -> bool:
    """Whether any of these layers has a direction set (store.directions)."""
    if not layer_ids:
        return False
    stmt = select(DirectionSet.id).where(DirectionSet.layer_id.in_(layer_ids)).limit(1)
    return session.execute(stmt).first() is not None


def layer_decompositions(session: Session, layer_id: int) -> list[tuple[int, str, float]]:
    """(unit index, text, coefficient) of every decomposition term in the layer."""
    stmt = (
        select(Unit.index, Decomposition.text, Decomposition.coefficient)
        .join(Decomposition, Decomposition.unit_id == Unit.id)
        .where(Unit.layer_id == layer_id)
    )
    return [tuple(row) for row in session.execute(stmt).all()]  # type: ignore[misc]


def decomposition_fingerprints(session: Session, layer_ids: Sequence[int]) -> dict[int, tuple[Any, ...]]:
    """Per layer with decompositions: (terms, largest row id, sum of coefficients), which any
    rewrite of the layer's decompositions changes; a cache of them is keyed by it."""
    if not layer_ids:
        return {}
    stmt = (
        select(Unit.layer_id, func.count(Decomposition.id), func.max(Decomposition.id), func.sum(Decomposition.coefficient))
        .join(Decomposition, Decomposition.unit_id == Unit.id)
        .where(Unit.layer_id.in_(list(layer_ids)))
        .group_by(Unit.layer_id)
    )
    return {int(layer_id): (int(count), int(last), float(total)) for layer_id, count, last, total in session.execute(stmt).all()}


def units_by_layer_index(session: Session, model_id: str, wanted: dict[str, Iterable[int]]) -> dict[tuple[str, int], dict[str, Any]]:
    """(layer name, unit index) -> {id, index, label} of the listed units of a model's layers, in one statement."""
    clauses = [and_(Layer.name == name, Unit.index.in_(sorted(set(indices)))) for name, indices in wanted.items() if indices]
    if not clauses:
        return {}
    stmt = (select(Unit.id, Unit.index, Unit.label, Layer.name.label("layer"))
            .join(Layer, Layer.id == Unit.layer_id)
            .where(Layer.model_id == model_id, or_(*clauses)))
    return {(row.pop("layer"), row["index"]): row for row in _rows(session, stmt)}


def word_embeddings(session: Session, model_id: str | None = None, layer_id: int | None = None) -> list[dict[str, Any]]:
    stmt = (
        select(
            WordEmbedding.id,
            WordEmbedding.vectors_uri,
            WordEmbedding.mean_uri,
            WordEmbedding.word_list_id,
            Layer.id.label("layer_id"),
            Layer.name.label("layer"),
            Layer.model_id,
            Layer.units,
        )
        .join(Layer, Layer.id == WordEmbedding.layer_id)
        .order_by(Layer.model_id, Layer.position, WordEmbedding.word_list_id)
    )
    if model_id is not None:
        stmt = stmt.where(Layer.model_id == model_id)
    if layer_id is not None:
        stmt = stmt.where(Layer.id == layer_id)
    return _rows(session, stmt)


def word_list_words(session: Session, word_list_id: str) -> list[str] | None:
    return session.execute(select(WordList.words).where(WordList.id == word_list_id)).scalar_one_or_none()


# -- search --------------------------------------------------------------------------------------
def search_units(
    session: Session, q: str, *, model_id: str | None = None, layer: str | None = None, cap: int = 2000
) -> list[dict[str, Any]]:
    """Units whose label, notes, top words or decomposition terms contain `q` (any case).

    One row per unit, best match first: a label match beats a word, a word beats a
    decomposition term, and among words and terms the higher-ranked wins. Each row says
    what matched. At most `cap` units per source are considered.
    """
    pattern = f"%{escape_like(q)}%"

    def scoped(stmt: Any) -> Any:
        stmt = stmt.join(Layer, Layer.id == Unit.layer_id)
        if model_id is not None:
            stmt = stmt.where(Layer.model_id == model_id)
        if layer is not None:
            stmt = stmt.where(Layer.name == layer)
        return stmt.limit(cap)

    sources = [
        ("label", 0, scoped(select(Unit.id, Unit.label, literal(0)).where(Unit.label.ilike(pattern, escape="\\")))),
        (
            "note",
            1,
            scoped(
                select(Unit.id, Annotation.text, literal(0))
                .join(Annotation, Annotation.unit_id == Unit.id)
                .where(Annotation.text.ilike(pattern, escape="\\"))
            ),
        ),
        (
            "word",
            2,
            scoped(
                select(Unit.id, WordActivation.word, WordActivation.rank)
                .join(WordActivation, WordActivation.unit_id == Unit.id)
                .where(WordActivation.word.ilike(pattern, escape="\\"), WordActivation.rank < 20)
            ),
        ),
        (
            "decomposition",
            3,
            scoped(
                select(Unit.id, Decomposition.text, Decomposition.rank)
                .join(Decomposition, Decomposition.unit_id == Unit.id)
                .where(Decomposition.text.ilike(pattern, escape="\\"))
            ),
        ),
    ]
    best: dict[int, tuple[int, int, str, str]] = {}
    for source, priority, stmt in sources:
        for unit_id, text, rank in session.execute(stmt).all():
            candidate = (priority, int(rank or 0), source, text)
            if unit_id not in best or candidate < best[unit_id]:
                best[unit_id] = candidate
    if not best:
        return []
    units = units_by_ids(session, best)
    layers = {
        (row["model_id"], row["name"]): row["position"]
        for row in _rows(
            session,
            select(Layer.model_id, Layer.name, Layer.position).where(
                Layer.id.in_(select(Unit.layer_id).where(Unit.id.in_(list(best))))
            ),
        )
    }
    keyed = []
    for unit_id, (priority, rank, source, text) in best.items():
        unit = units[unit_id]
        key = (priority, rank, unit["model_id"], layers.get((unit["model_id"], unit["layer"]), 0), unit["index"])
        keyed.append((key, {**unit, "matched": source, "match_text": text, "match_rank": rank}))
    keyed.sort(key=lambda pair: pair[0])
    return [row for _key, row in keyed]


# -- datasets ------------------------------------------------------------------------------------
def datasets(session: Session) -> list[dict[str, Any]]:
    return _rows(session, select(Dataset.id, Dataset.kind, Dataset.image_count).order_by(Dataset.id))


def dataset_images(session: Session, dataset_id: str, offset: int, limit: int) -> list[dict[str, Any]]:
    stmt = (
        select(DatasetImage.position, StoredImage.blob_uri, StoredImage.width, StoredImage.height)
        .join(StoredImage, StoredImage.id == DatasetImage.image_id)
        .where(DatasetImage.dataset_id == dataset_id)
        .order_by(DatasetImage.position)
        .offset(offset)
        .limit(limit)
    )
    return _rows(session, stmt)


def dataset_image(session: Session, dataset_id: str, position: int) -> dict[str, Any] | None:
    stmt = (
        select(StoredImage.blob_uri, StoredImage.width, StoredImage.height)
        .join(DatasetImage, DatasetImage.image_id == StoredImage.id)
        .where(DatasetImage.dataset_id == dataset_id, DatasetImage.position == position)
    )
    row = session.execute(stmt).mappings().first()
    return dict(row) if row else None


# -- collections ---------------------------------------------------------------------------------
def count_collections(session: Session) -> int:
    return session.execute(select(func.count(Collection.id))).scalar_one()


def collections_page(session: Session, offset: int, limit: int) -> list[dict[str, Any]]:
    counts = (
        select(CollectionUnit.collection_id, func.count(CollectionUnit.id).label("unit_count"))
        .group_by(CollectionUnit.collection_id)
        .subquery()
    )
    stmt = (
        select(Collection.__table__, func.coalesce(counts.c.unit_count, 0).label("unit_count"))
        .outerjoin(counts, counts.c.collection_id == Collection.id)
        .order_by(Collection.updated_at.desc(), Collection.id)
        .offset(offset)
        .limit(limit)
    )
    return _rows(session, stmt)


def collection_row(session: Session, collection_id: str) -> dict[str, Any] | None:
    row = session.execute(select(Collection.__table__).where(Collection.id == collection_id)).mappings().first()
    return dict(row) if row else None


def count_collection_units(session: Session, collection_id: str) -> int:
    stmt = select(func.count(CollectionUnit.id)).where(CollectionUnit.collection_id == collection_id)
    return session.execute(stmt).scalar_one()


def collection_units(session: Session, collection_id: str, offset: int, limit: int) -> list[dict[str, Any]]:
    stmt = (
        select(
            CollectionUnit.position,
            CollectionUnit.note,
            Unit.id.label("unit_id"),
            Unit.index,
            Unit.label,
            Layer.name.label("layer"),
            Layer.model_id,
        )
        .join(Unit, Unit.id == CollectionUnit.unit_id)
        .join(Layer, Layer.id == Unit.layer_id)
        .where(CollectionUnit.collection_id == collection_id)
        .order_by(CollectionUnit.position, CollectionUnit.id)
        .offset(offset)
        .limit(limit)
    )
    return _rows(session, stmt)


# -- jobs ----------------------------------------------------------------------------------------
def _job_filter(stmt: Any, state: str | None, model_id: str | None, kind: str | None) -> Any:
    if state is not None:
        stmt = stmt.where(Job.state == state)
    if model_id is not None:
        stmt = stmt.where(Job.model_id == model_id)
    if kind is not None:
        stmt = stmt.where(Job.kind == kind)
    return stmt


def count_jobs(session: Session, *, state: str | None = None, model_id: str | None = None, kind: str | None = None) -> int:
    return session.execute(_job_filter(select(func.count(Job.id)), state, model_id, kind)).scalar_one()


def jobs_by_state(session: Session, *, model_id: str | None = None, kind: str | None = None) -> dict[str, int]:
    stmt = _job_filter(select(Job.state, func.count(Job.id)).group_by(Job.state), None, model_id, kind)
    return {state: count for state, count in session.execute(stmt).all()}


def jobs_page(
    session: Session, offset: int, limit: int, *, state: str | None = None, model_id: str | None = None, kind: str | None = None
) -> list[dict[str, Any]]:
    # Running first (what a reader comes for), then pending, failed, done; newest activity first.
    state_order = case({"running": 0, "pending": 1, "failed": 2, "done": 3}, value=Job.state, else_=4)
    stmt = _job_filter(select(Job.__table__), state, model_id, kind).order_by(
        state_order, Job.updated_at.desc(), Job.id.desc()
    )
    return _rows(session, stmt.offset(offset).limit(limit))


def job_kinds(session: Session) -> list[str]:
    return list(session.execute(select(Job.kind).distinct().order_by(Job.kind)).scalars())


def export_details(session: Session, unit_ids: Sequence[int], top: int = 10,
                   list_order: Sequence[str] = ()) -> dict[int, dict[str, Any]]:
    """For the bulk export: each unit's top words (of its first word list in `list_order`, named
    as `word_list`), dataset examples and decomposition terms."""
    out: dict[int, dict[str, Any]] = defaultdict(lambda: {"word_list": None, "words": [], "examples": [], "decomposition": []})
    if not unit_ids:
        return {}
    words = (
        select(WordActivation.unit_id, WordActivation.word_list_id, WordActivation.word, WordActivation.activation)
        .where(WordActivation.unit_id.in_(unit_ids), WordActivation.rank < top)
        .order_by(WordActivation.unit_id, *_by_list(list_order), WordActivation.rank)
    )
    for unit_id, list_id, *rest in session.execute(words).all():
        entry = out[unit_id]
        if entry["word_list"] is None:
            entry["word_list"] = list_id
        if entry["word_list"] == list_id:
            entry["words"].append(tuple(rest))
    examples = (
        select(
            DatasetExample.unit_id, DatasetExample.sign, DatasetExample.rank, DatasetExample.activation,
            StoredImage.blob_uri, DatasetExample.position,
        )
        .join(StoredImage, StoredImage.id == DatasetExample.image_id)
        .where(DatasetExample.unit_id.in_(unit_ids), DatasetExample.rank < top)
        .order_by(DatasetExample.unit_id, DatasetExample.dataset_id, DatasetExample.sign.desc(), DatasetExample.rank)
    )
    for unit_id, *rest in session.execute(examples).all():
        out[unit_id]["examples"].append(tuple(rest))
    terms = (
        select(Decomposition.unit_id, Decomposition.text, Decomposition.coefficient)
        .where(Decomposition.unit_id.in_(unit_ids))
        .order_by(Decomposition.unit_id, Decomposition.pool_id, Decomposition.rank)
    )
    for unit_id, *rest in session.execute(terms).all():
        out[unit_id]["decomposition"].append(tuple(rest))
    return dict(out)


def word_list_sources(session: Session, list_ids: Sequence[str]) -> dict[str, str]:
    """Each word list's source ("wordfreq:en:10000", "synthetic-world:vocabulary", a file)."""
    if not list_ids:
        return {}
    return dict(session.execute(select(WordList.id, WordList.source).where(WordList.id.in_(list(set(list_ids))))).all())


def world_models(session: Session, model_ids: Sequence[str]) -> set[str]:
    """Which of these models were trained on the synthetic world (and so read its vocabulary)."""
    if not model_ids:
        return set()
    rows = session.execute(select(Model.id, Model.source, Model.arch).where(Model.id.in_(list(set(model_ids))))).all()
    return {model_id for model_id, source, arch in rows if trained_on_world(source, arch)}
