"""Words: nearest words and word arithmetic over image-based word embeddings, and the order
in which pages offer a model's word lists."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby
from typing import Any

from sqlalchemy.orm import Session

from app.urls import Urls
from app.vectors import VectorCache
from precompute.errors import Problem
from precompute.words import preferred_word_lists, word_list_label
from store import queries
from store.blobs import MissingBlob

MAX_EXPRESSION = 200
DEFAULT_K = 20


def parse_word_expression(q: str) -> list[tuple[int, str]]:
    """'king - man + woman' -> [(1, 'king'), (-1, 'man'), (1, 'woman')]."""
    terms: list[tuple[int, str]] = []
    sign = 1
    for token in q.replace("+", " + ").split():
        if token == "+":
            sign = 1
        elif token == "-":
            sign = -1
        else:
            if token.startswith("-") and len(token) > 1:
                sign, token = -1, token[1:]
            terms.append((sign, token.lower()))
            sign = 1
    return terms


def ordered_word_lists(session: Session, model_id: str, list_ids: Sequence[str]) -> list[dict[str, str]]:
    """A model's word lists as pages offer them, first the default: the world's vocabulary for
    a toy model, the common English words (or whatever else) for a real one."""
    sources = queries.word_list_sources(session, list_ids)
    pairs = [(list_id, sources.get(list_id, "")) for list_id in dict.fromkeys(list_ids)]
    order = preferred_word_lists(pairs, world_model=model_id in queries.world_models(session, [model_id]))
    return [{"id": list_id, "source": sources.get(list_id, "")} for list_id in order]


def _preferred_first(session: Session, embeddings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Embeddings in their (model, layer) order, each layer's lists in preferred order."""
    sources = queries.word_list_sources(session, [e["word_list_id"] for e in embeddings])
    world = queries.world_models(session, [e["model_id"] for e in embeddings])
    out: list[dict[str, Any]] = []
    for (model_id, _), group in groupby(embeddings, key=lambda e: (e["model_id"], e["layer_id"])):
        by_list = {e["word_list_id"]: e for e in group}
        order = preferred_word_lists([(i, sources.get(i, "")) for i in by_list], world_model=model_id in world)
        out.extend(by_list[i] for i in order)
    return out


def _choose(
    embeddings: list[dict[str, Any]], model_id: str | None, layer: str | None, word_list: str | None
) -> dict[str, Any] | None:
    """The first embedding that fits the filters given."""
    for e in embeddings:
        if (not model_id or e["model_id"] == model_id) and (not layer or e["layer"] == layer) and (
            not word_list or e["word_list_id"] == word_list
        ):
            return e
    return None


def _list_choices(
    session: Session, embeddings: list[dict[str, Any]], chosen: dict[str, Any] | None, urls: Urls, q: str
) -> list[dict[str, Any]]:
    """The word lists of the chosen model and layer, to switch between, the default first."""
    if chosen is None:
        return []
    same = [e for e in embeddings if e["model_id"] == chosen["model_id"] and e["layer_id"] == chosen["layer_id"]]
    sources = queries.word_list_sources(session, [e["word_list_id"] for e in same])
    choices = []
    for e in same:
        params = {"q": q, "model": e["model_id"], "layer": e["layer"], "word_list": e["word_list_id"]}
        source = sources.get(e["word_list_id"], "")
        choices.append({"id": e["word_list_id"], "source": source, "label": word_list_label(source),
                        "current": e is chosen, "url": urls.html.words(**params), "api_url": urls.api.words(**params)})
    return choices


def words_page(
    session: Session, cache: VectorCache, urls: Urls, *, q: str = "", model_id: str | None = None,
    layer: str | None = None, word_list: str | None = None, k: int = DEFAULT_K,
) -> dict[str, Any]:
    import numpy as np

    embeddings = _preferred_first(session, queries.word_embeddings(session))
    if word_list and all(e["word_list_id"] != word_list for e in embeddings):
        known = ", ".join(dict.fromkeys(e["word_list_id"] for e in embeddings)) or "none yet"
        raise Problem(404, "unknown-word-list", f"No word embedding uses the word list {word_list!r}; word lists: {known}.")
    available = [
        {"model": e["model_id"], "layer": e["layer"], "word_list": e["word_list_id"],
         "url": urls.html.words(model=e["model_id"], layer=e["layer"], word_list=e["word_list_id"])}
        for e in embeddings
    ]
    q = q.strip()
    if len(q) > MAX_EXPRESSION:
        raise Problem(422, "long-query", f"expressions are limited to {MAX_EXPRESSION} characters")
    chosen = _choose(embeddings, model_id, layer, word_list)
    page: dict[str, Any] = {
        "q": q,
        "available": available,
        "model": chosen["model_id"] if chosen else model_id,
        "layer": chosen["layer"] if chosen else layer,
        "word_list": chosen["word_list_id"] if chosen else word_list,
        "word_lists": _list_choices(session, embeddings, chosen, urls, q),
        "terms": [],
        "results": [],
        "examples": [],
        "missing": [],
        "api_url": urls.api.words(q=q, model=model_id, layer=layer, word_list=word_list, k=k if k != DEFAULT_K else None),
    }
    if chosen is None:
        if embeddings:
            page["missing"].append("No word embedding matches that model, layer and word list; pick one of those available.")
        else:
            page["missing"].append("No image-based word embeddings have been computed yet (the words job writes them).")
        return page
    words = queries.word_list_words(session, chosen["word_list_id"]) or []
    page["examples"] = words[:12]
    if not q:
        return page
    terms = parse_word_expression(q)
    lookup = {w.lower(): i for i, w in enumerate(words)}
    unknown = sorted({w for _, w in terms if w not in lookup})
    if not terms:
        raise Problem(422, "empty-expression", "the expression has no words")
    if unknown:
        raise Problem(422, "unknown-words", f"not in the word list {chosen['word_list_id']!r}: {', '.join(unknown)}",
                      unknown_words=unknown)
    try:
        matrix = cache.word_embedding(chosen["vectors_uri"])
        normalised = cache.word_vectors(chosen["vectors_uri"])
    except MissingBlob as missing_blob:
        page["missing"].append(f"The word embedding of {chosen['model_id']} {chosen['layer']} over {chosen['word_list_id']!r} "
                               f"is stored, but its file ({missing_blob.name}) is missing from the blob store; "
                               "running the words job again writes it.")
        return page
    if matrix.shape[0] != len(words):
        raise Problem(409, "inconsistent-embedding", "the stored embedding does not match its word list")
    query = np.zeros(matrix.shape[1], dtype=np.float32)
    for sign, word in terms:
        query += sign * matrix[lookup[word]]
    norm = float(np.linalg.norm(query))
    page["terms"] = [{"sign": "+" if s > 0 else "-", "word": w} for s, w in terms]
    if norm == 0:
        page["missing"].append("The expression sums to the zero vector; nothing is nearest to it.")
        return page
    sims = normalised @ (query / norm)
    exclude = {lookup[w] for _, w in terms}
    order = np.argsort(-sims, kind="stable")
    results = []
    for i in order:
        if int(i) in exclude:
            continue
        results.append({"word": words[int(i)], "similarity": round(float(sims[int(i)]), 5)})
        if len(results) == k:
            break
    page["results"] = results
    return page
