"""Search: units whose label, notes, top words or decomposition contain a text, and (live)
units whose stored direction is nearest to an encoded text prompt."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy.orm import Session

from app.pages.common import DEFAULT_PER_PAGE, NO_THUMBNAIL, offset, pagination, unit_thumbnails
from app.urls import Urls
from app.vectors import VectorCache
from precompute.errors import Problem
from store import queries

MAX_QUERY = 200


def search_page(
    session: Session, urls: Urls, *, q: str = "", model_id: str | None = None, layer: str | None = None,
    page: int = 1, per_page: int = DEFAULT_PER_PAGE,
) -> dict[str, Any]:
    q = q.strip()
    if len(q) > MAX_QUERY:
        raise Problem(422, "long-query", f"search text is limited to {MAX_QUERY} characters")
    model_id, layer = model_id or None, layer or None
    results: list[dict[str, Any]] = []
    total = 0
    if q:
        found = queries.search_units(session, q, model_id=model_id, layer=layer)
        total = len(found)
        chunk = found[offset(page, per_page): offset(page, per_page) + per_page]
        thumbs = unit_thumbnails(session, urls, [row["id"] for row in chunk])
        for row in chunk:
            results.append(
                {
                    "model": row["model_id"],
                    "layer": row["layer"],
                    "index": row["index"],
                    "label": row["label"],
                    "matched": row["matched"],
                    "match_text": row["match_text"],
                    **thumbs.get(row["id"], NO_THUMBNAIL),
                    **urls.unit_links(row["model_id"], row["layer"], row["index"]),
                }
            )
    return {
        "q": q,
        "model": model_id,
        "layer": layer,
        "results": results,
        "pagination": pagination(urls, Urls.search, total=total, page=page, per_page=per_page, q=q, model=model_id,
                                 layer=layer),
        "models": _model_choices(session),
        "api_url": urls.api.search(q=q, model=model_id, layer=layer, page=page if page != 1 else None),
    }


def _model_choices(session: Session) -> list[dict[str, Any]]:
    models = queries.models_page(session, 0, 1000)
    layers = queries.layers_of(session, [m["id"] for m in models])
    return [{"id": m["id"], "layers": [layer["name"] for layer in layers.get(m["id"], [])]} for m in models]


# How a prompt becomes a vector. "class": as the zero-shot classifier reads a class name (the mean
# of its prompts: OpenAI's templates for a real CLIP, the world's prompt ensemble on a toy model),
# the text embedding M_text(c) the article aligns neuron directions with, and the one /discover
# segments by. "text": the text exactly as typed, centred on a cached text pool's mean.
PROMPT_READINGS = ("class", "text")


def prompt_page(
    session: Session, cache: VectorCache, text_vector: Any, urls: Urls, *, prompt: str, model_id: str, layer: str | None, k: int,
    reading: str = "class",
) -> dict[str, Any]:
    """A text prompt as a sparse code over the neuron directions (the article's "emotion
    composition"): `k` units chosen by orthogonal matching pursuit over the unit-length
    directions of the searched layers together, listed with their signed coefficients: the
    units that add to the prompt first, then those it subtracts, each in the order the pursuit
    picks them. The pursuit's first pick is the unit whose direction is most aligned with the
    prompt, |<r_n, e(prompt)>|, and every later one the unit that best explains what is left, so
    the order does not depend on `k`; the largest coefficients do (with more terms, nearly
    parallel directions take large coefficients of opposite signs).

    `text_vector` is the prompt's unit-length embedding, read as `reading` says
    (PROMPT_READINGS). Read as a class name it is used as it is, as the article uses M_text(c).
    Read as typed it is first centred on the mean embedding of a text pool cached for the
    model, when there is one (the pool's common component says nothing about the prompt), as
    the decompositions centre their pools. On the toy models the world's captions say a bare
    colour name of pictures of the written word, so the bare word is nearest the units that
    read it; read as a class name, the first unit of each colour name has >= 80 % of its top 50
    object pictures in that colour for 7 of 8 colours on toy-rn and 8 of 8 on toy-vit, against
    1 and 6 read as typed (tests/text_semantics.py; other rankings in tests/prompt_semantics.py)."""
    import numpy as np

    layers = queries.layers_of(session, [model_id]).get(model_id, [])
    if layer:
        layers = [l for l in layers if l["name"] == layer]
    blocks, owners = [], []  # dictionary rows, and the (layer, unit index) of each row
    searched = []
    lost: list[str] = []  # direction sets stored but missing from the blob store
    for entry in layers:
        matrix = cache.directions(session, entry["id"])
        if matrix is None:
            continue
        if matrix.missing:
            lost.append(f"layer {entry['name']!r}")
        if len(matrix.indices) == 0 or matrix.vectors.shape[1] != len(text_vector):
            continue  # directions of another space (e.g. a different head): not comparable
        searched.append(entry["name"])
        blocks.append(matrix.vectors)
        owners.extend((entry["name"], int(i)) for i in matrix.indices)
    centred_on = None
    target = np.asarray(text_vector, dtype=np.float32)
    if blocks and reading == "text":
        mean = cache.text_mean(session, model_id)
        if mean is not None and len(mean[1]) == len(target):
            centred_on, target = mean[0], target - mean[1]
    ranked: list[tuple[float, float, str, int]] = []  # (coefficient, similarity, layer, index)
    if blocks and np.linalg.norm(target) > 0:
        import torch

        from precompute.omp import omp

        dictionary = torch.from_numpy(np.concatenate(blocks))
        codes = omp(dictionary, torch.from_numpy(target).unsqueeze(0), min(k, len(owners), 128))
        unit_target = target / np.linalg.norm(target)
        count = int(codes.counts[0])
        for atom, coefficient in zip(codes.atoms[0, :count].tolist(), codes.coefficients[0, :count].tolist()):
            name, index = owners[atom]
            ranked.append((coefficient, float(dictionary[atom].numpy() @ unit_target), name, index))
        ranked.sort(key=lambda r: r[0] <= 0)  # what adds to the prompt, then what it subtracts; stable: in pick order
    by_layer: dict[str, list[int]] = defaultdict(list)
    for _, _, name, i in ranked:
        by_layer[name].append(i)
    info: dict[tuple[str, int], dict[str, Any]] = {}
    for entry in layers:
        if entry["name"] in by_layer:
            for i, row in queries.unit_ids_by_index(session, entry["id"], by_layer[entry["name"]]).items():
                info[(entry["name"], i)] = row
    thumbs = unit_thumbnails(session, urls, [row["id"] for row in info.values()])
    results = []
    for rank, (coefficient, similarity, name, i) in enumerate(ranked):
        row = info.get((name, i))
        results.append(
            {
                "model": model_id,
                "layer": name,
                "index": i,
                "rank": rank,
                "coefficient": round(coefficient, 5),
                "similarity": round(similarity, 5),
                "label": row["label"] if row else None,
                **(thumbs.get(row["id"], NO_THUMBNAIL) if row else NO_THUMBNAIL),
                **urls.unit_links(model_id, name, i),
            }
        )
    missing = []
    if not searched:
        where = f"layer {layer!r} of {model_id!r}" if layer else f"any layer of {model_id!r}"
        missing.append(f"No unit directions are stored for {where} yet, so there is nothing to compare the prompt with. "
                       "They are written by the directions job (`microscope precompute directions`).")
    if lost:
        missing.append(f"Some unit directions are stored but their files are missing from the blob store "
                       f"({', '.join(lost)}); those units are left out of the ranking.")
    return {"prompt": prompt, "model": model_id, "layer": layer, "reading": reading, "layers_searched": searched,
            "centred_on": centred_on, "results": results, "missing": missing}
