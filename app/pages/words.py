"""Words: nearest words and word arithmetic over image-based word embeddings."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.urls import Urls
from app.vectors import VectorCache
from precompute.errors import Problem
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


def words_page(
    session: Session, cache: VectorCache, urls: Urls, *, q: str = "", model_id: str | None = None,
    layer: str | None = None, word_list: str | None = None, k: int = DEFAULT_K,
) -> dict[str, Any]:
    import numpy as np

    embeddings = queries.word_embeddings(session)
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
