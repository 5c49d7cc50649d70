"""A unit's page: everything we know about one unit."""

from __future__ import annotations

import pickle
from collections import defaultdict
from dataclasses import dataclass
from collections.abc import Hashable
from typing import Any

from sqlalchemy.orm import Session

from app.cache import TTLCache
from app.pages.common import NO_THUMBNAIL, cell, iso, require_layer, require_model, spatial_of, stats, unit_thumbnails
from app.pages.words import ordered_word_lists
from app.svg import normalise_histogram
from app.urls import Urls
from app.vectors import VectorCache
from precompute.errors import Problem
from precompute.words import word_list_label
from store import queries
from store.blobs import MissingBlob

NEAREST_UNITS = 12

BASIS_EXPLANATIONS = {
    "direction": "cosine similarity of the units' second-order directions in the joint image-text space",
    "word_embedding": "cosine similarity of the units' activations over the rastered word list",
    "decomposition": "cosine similarity of the units' sparse text decompositions",
    None: "nothing to compare with yet: no directions, word embeddings or decompositions are stored for this layer",
}


def _featureviz(rows: list[dict[str, Any]], urls: Urls) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {"main": [], "diversity": [], "facets": [], "other": []}
    for row in rows:
        entry = {
            "kind": row["kind"],
            "variant": row["variant"],
            "image_url": urls.blob(row["blob_uri"]),
            "final_activation": row["final_activation"],
            "parameters": row["parameters"] or {},
        }
        if row["kind"] in queries.MAIN_FEATUREVIZ_KINDS and row["variant"] == "":
            groups["main"].append(entry)
        elif row["kind"] == "diversity":
            groups["diversity"].append(entry)
        elif row["kind"] == "facet":
            groups["facets"].append(entry)
        else:
            groups["other"].append(entry)
    groups["diversity"].sort(key=lambda e: (int(e["variant"]) if e["variant"].isdigit() else 1 << 30, e["variant"]))
    return groups


def _examples(rows: list[dict[str, Any]], spatial: list[int] | None, urls: Urls, model_id: str) -> list[dict[str, Any]]:
    by_dataset: dict[str, dict[str, Any]] = {}
    for row in rows:
        group = by_dataset.setdefault(row["dataset_id"], {"dataset": row["dataset_id"], "top": [], "bottom": []})
        group[row["sign"]].append(
            {
                "rank": row["rank"],
                "activation": row["activation"],
                "image_url": urls.blob(row["blob_uri"]),
                "crop_url": urls.example_crop(model_id, row),
                "width": row["width"],
                "height": row["height"],
                "position": row["position"],
                "cell": cell(row["position"], spatial),
            }
        )
    return list(by_dataset.values())


def _buckets(rows: list[dict[str, Any]], urls: Urls) -> list[dict[str, Any]]:
    by_dataset: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        bucket = by_dataset[row["dataset_id"]].setdefault(
            row["bucket"], {"bucket": row["bucket"], "low": row["low"], "high": row["high"], "samples": []}
        )
        bucket["samples"].append({"slot": row["slot"], "activation": row["activation"], "image_url": urls.blob(row["blob_uri"])})
    return [{"dataset": dataset, "buckets": [buckets[b] for b in sorted(buckets)]} for dataset, buckets in by_dataset.items()]


def _grouped(rows: list[dict[str, Any]], key: str, name: str, items: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        out[row[key]].append({f: row[f] for f in fields})
    return [{name: group, items: entries} for group, entries in out.items()]


def _words(session: Session, unit_id: int, model_id: str) -> list[dict[str, Any]]:
    """The unit's top words per word list, the model's default list first."""
    groups = _grouped(queries.words_of(session, unit_id), "word_list_id", "word_list", "words", ("rank", "word", "activation"))
    by_list = {g["word_list"]: g for g in groups}
    ordered = ordered_word_lists(session, model_id, list(by_list))
    return [by_list[entry["id"]] | {"source": entry["source"]} for entry in ordered]


def _word_lists(
    groups: list[dict[str, Any]], chosen: str | None, urls: Urls, model_id: str, layer_name: str, index: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the word groups shown, the lists to switch between): the list asked for, or all of
    them with the default first. An unknown list is refused."""
    if chosen is not None and all(g["word_list"] != chosen for g in groups):
        known = ", ".join(g["word_list"] for g in groups) or "none yet"
        raise Problem(404, "unknown-word-list",
                      f"Unit {index} of {model_id}/{layer_name} has no top words in the word list {chosen!r}; word lists: {known}.")
    current = chosen or (groups[0]["word_list"] if groups else None)
    choices = [
        {"id": g["word_list"], "source": g["source"], "label": word_list_label(g["source"]), "current": g["word_list"] == current,
         "url": urls.html.unit(model_id, layer_name, index, word_list=g["word_list"]),
         "api_url": urls.api.unit(model_id, layer_name, index, word_list=g["word_list"])}
        for g in groups
    ]
    shown = [g for g in groups if g["word_list"] == chosen] if chosen else groups
    return [{"word_list": g["word_list"], "words": g["words"]} for g in shown], choices


def nearest_units(
    session: Session, cache: VectorCache, layer_id: int, unit: dict[str, Any], model_id: str, layer_name: str, urls: Urls,
    k: int = NEAREST_UNITS,
) -> dict[str, Any]:
    """The units of the same layer most like this one, by the first basis that is stored:
    second-order directions, then word-activation profiles, then decomposition terms.

    Labels are left out (None): they change with every edit, so the page reads them on each
    view (`with_labels`), while this part lasts as long as the jobs' results."""
    index = unit["index"]
    found: list[tuple[int, float]] = []
    basis = None
    lost = []  # stored inputs whose blob is missing from the blob store
    matrix = cache.directions(session, layer_id)
    if matrix is not None and matrix.missing:
        lost.append("the layer's direction set")
    elif matrix is not None and matrix.row_of(index) is not None:
        basis, found = "direction", matrix.neighbours(index, k)
    if basis is None:
        for embedding in queries.word_embeddings(session, layer_id=layer_id)[:1]:
            try:
                profiles = cache.unit_word_profiles(embedding["vectors_uri"])
            except MissingBlob:
                lost.append("the layer's word embedding")
                continue
            if profiles.row_of(index) is not None:
                basis, found = "word_embedding", profiles.neighbours(index, k)
    if basis is None:
        matrix = cache.decompositions(session, layer_id)
        if matrix is not None and matrix.row_of(index) is not None:
            basis, found = "decomposition", matrix.neighbours(index, k)
    neighbours = queries.unit_ids_by_index(session, layer_id, [i for i, _ in found])
    thumbs = unit_thumbnails(session, urls, [neighbours[i]["id"] for i, _ in found if i in neighbours])
    units = []
    for i, similarity in found:
        row = neighbours.get(i)
        units.append(
            {
                "index": i,
                "similarity": round(similarity, 5),
                "label": None,
                **(thumbs.get(row["id"], NO_THUMBNAIL) if row else NO_THUMBNAIL),
                **urls.unit_links(model_id, layer_name, i),
            }
        )
    explanation = BASIS_EXPLANATIONS[basis]
    if lost:
        explanation += f" ({' and '.join(lost)} {'is' if len(lost) == 1 else 'are'} stored, but missing from the blob store)"
    return {"basis": basis, "explanation": explanation, "units": units}


def with_labels(session: Session, layer_id: int, nearest: dict[str, Any]) -> dict[str, Any]:
    """`nearest` with its units' current labels (one query), leaving the cached dict as it is."""
    labels = {i: row["label"] for i, row in queries.unit_ids_by_index(session, layer_id, [u["index"] for u in nearest["units"]]).items()}
    return {**nearest, "units": [{**u, "label": labels.get(u["index"])} for u in nearest["units"]]}


def _unit_results(
    session: Session, cache: VectorCache, unit: dict[str, Any], spatial: list[int] | None, model_id: str, layer_name: str,
    urls: Urls,
) -> dict[str, Any]:
    """What the precompute jobs wrote about a unit: everything on its page that nobody edits."""
    uid = unit["id"]
    nearest = nearest_units(session, cache, unit["layer_id"], unit, model_id, layer_name, urls)
    directions = cache.directions(session, unit["layer_id"])
    return {
        "featureviz": _featureviz(queries.featureviz_of(session, uid), urls),
        "examples": _examples(queries.examples_of(session, uid), spatial, urls, model_id),
        "buckets": _buckets(queries.buckets_of(session, uid), urls),
        "words": _words(session, uid, model_id),
        "decomposition": _decomposition(session, uid),
        "maximal_text": _maximal_text(session, uid),
        "nearest": nearest,
        # False when the layer's direction blob is missing too
        "has_direction": directions is not None and directions.row_of(unit["index"]) is not None,
    }


def _decomposition(session: Session, unit_id: int) -> list[dict[str, Any]]:
    """The unit's decompositions, one group per pool: its signed terms and the reconstruction
    score (cosine between the direction and the sum of the terms)."""
    groups = _grouped(queries.decomposition_of(session, unit_id), "pool_id", "pool", "terms",
                      ("rank", "text", "coefficient", "score"))
    return [{"pool": g["pool"], "score": g["terms"][0]["score"],
             "terms": [{key: t[key] for key in ("rank", "text", "coefficient")} for t in g["terms"]]} for g in groups]


def _maximal_text(session: Session, unit_id: int) -> dict[str, Any] | None:
    """The text the unit's direction favours most, beside the best single word (None when the
    maxtext job has not run for the unit)."""
    from store.maximal_texts import maximal_text_of

    row = maximal_text_of(session, unit_id)
    if row is None:
        return None
    return {"text": row["text"], "tokens": row["tokens"], "score": row["score"], "start_text": row["start_text"],
            "start_score": row["start_score"], "steps": row["steps"], "parameters": row["parameters"] or {},
            "dataset": row["dataset_id"]}


# The parts of a unit page that only the precompute jobs change (cached under the generation).
RESULT_PARTS = ("featureviz", "examples", "buckets", "words", "decomposition", "maximal_text")


@dataclass(frozen=True)
class UnitRead:
    """A unit page's first read: the unit row, and (when asked for) the stamps its page is
    cached under: the jobs' results generation and the store's edit stamp."""

    unit: dict[str, Any]
    generation: Hashable = None
    edits: int | None = None

    def view_key(self) -> tuple[Hashable, ...] | None:
        """What a rendered page of this unit depends on besides the request, or None when
        the store keeps no edit stamp (then see `unit_view_key`)."""
        return None if self.edits is None else ("stamped", self.generation, self.edits)


def read_unit(session: Session, model_id: str, layer_name: str, index: int, stamps: bool = False) -> UnitRead:
    """The unit row (one round trip, stamps included with `stamps`); a 404 naming what exists
    when there is no such model, layer or unit."""
    if stamps:
        unit, generation, edits = queries.unit_core_and_stamps(session, model_id, layer_name, index)
    else:
        unit, generation, edits = queries.unit_core(session, model_id, layer_name, index), None, None
    if unit is None:
        require_model(session, model_id)
        layer = require_layer(session, model_id, layer_name)
        raise Problem(404, "unknown-unit",
                      f"Layer {layer_name!r} of {model_id!r} has units 0 to {layer['units'] - 1}; there is no unit {index}.")
    return UnitRead(unit, generation, edits)


def unit_view_key(page: dict[str, Any], generation: Hashable) -> tuple[Hashable, ...]:
    """What a rendered unit page depends on besides the request, for a store without an edit
    stamp: the results by the generation they were read under, and everything else as it is
    now (label, statistics, notes, collections, neighbours and their labels)."""
    return (generation, repr({key: value for key, value in page.items() if key not in RESULT_PARTS}))


def _neighbour(urls: Urls, model_id: str, layer_name: str, index: int, units: int) -> dict[str, Any] | None:
    if not 0 <= index < units:
        return None
    return urls.unit_links(model_id, layer_name, index) | {"index": index}


def unit_page(
    session: Session, cache: VectorCache, model_id: str, layer_name: str, index: int, urls: Urls,
    results: TTLCache | None = None, word_list: str | None = None, read: UnitRead | None = None,
) -> dict[str, Any]:
    """The unit page. With `results`, what the jobs wrote (visualizations, examples, words,
    decompositions, neighbours) is reused until a job commits anything (in any process; see
    queries.results_generation) or the cache's lifetime ends; the unit row (label,
    statistics), its notes, its collections and its neighbours' labels are read on every view.
    `word_list` picks the one word list whose top words are shown (default: all, the model's
    default first). `read` is the caller's `read_unit`, if it made one (with stamps when
    `results` is given)."""
    if read is None:
        read = read_unit(session, model_id, layer_name, index, stamps=results is not None)
    unit, generation = read.unit, read.generation
    spatial = spatial_of(unit)

    def load() -> dict[str, Any]:
        return _unit_results(session, cache, unit, spatial, model_id, layer_name, urls)

    if results is None:
        parts = load()
    else:
        # Cached pickled: a demo's 1,280 units are ~350,000 small dicts and lists that Python's
        # collector would otherwise walk on each full collection (a pause of hundreds of ms for
        # every request in flight); unpickling one unit's parts takes a fraction of a millisecond.
        key = ("unit", unit["layer_id"], unit["id"], unit["direction_uri"], urls.base)
        parts = pickle.loads(results.get(key, lambda: pickle.dumps(load(), pickle.HIGHEST_PROTOCOL), stamp=generation))
    parts = {**parts, "nearest": with_labels(session, unit["layer_id"], parts["nearest"])}
    has_direction = parts["has_direction"]  # a job result, read with the others once per generation
    uid = unit["id"]
    notes = [
        {**row, "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"])}
        for row in queries.annotations_of(session, uid)
    ]
    collections = [
        {"id": c["id"], "title": c["title"], **urls.collection_links(c["id"])} for c in queries.collections_of(session, uid)
    ]
    histogram = normalise_histogram(unit["histogram"])
    words, word_lists = _word_lists(parts["words"], word_list, urls, model_id, layer_name, index)
    present = {
        "feature visualization": parts["featureviz"]["main"],
        "dataset examples": parts["examples"],
        "activation histogram": histogram,
        "conditional-probability samples": parts["buckets"],
        "rastered words": words,
        "text decomposition": parts["decomposition"],
        "text feature visualization": parts["maximal_text"],
        "second-order direction": has_direction,
    }
    units = unit["layer_units"]
    return {
        "id": f"{model_id}/{layer_name}/{index}",
        "model": {"id": model_id, **urls.model_links(model_id)},
        "layer": {
            "name": layer_name,
            "kind": unit["layer_kind"],
            "units": units,
            "spatial": spatial,
            **urls.layer_links(model_id, layer_name),
        },
        "index": index,
        "label": unit["label"],
        "stats": stats(unit),
        "histogram": histogram,
        **parts,
        "words": words,
        "word_list": next((c["id"] for c in word_lists if c["current"]), None),
        "word_lists": word_lists,
        "has_direction": has_direction,
        "annotations": notes,
        "collections": collections,
        "prev": _neighbour(urls, model_id, layer_name, index - 1, units),
        "next": _neighbour(urls, model_id, layer_name, index + 1, units),
        "missing": [name for name, value in present.items() if not value],
        **urls.unit_links(model_id, layer_name, index),
        **({"url": urls.html.unit(model_id, layer_name, index, word_list=word_list),
            "api_url": urls.api.unit(model_id, layer_name, index, word_list=word_list)} if word_list else {}),
    }
