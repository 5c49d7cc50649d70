"""The typographic evaluation tables (the Distill article's Figure 16): per model, dataset and
label set, each attack's target, text, pixel cover and success rate, and what the search found."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.urls import Urls
from precompute.errors import Problem
from store import typographic


def typographic_evals_page(session: Session, urls: Urls, *, model_id: str | None = None, dataset: str | None = None,
                           labels: str | None = None, limit: int = 50) -> dict[str, Any]:
    evaluations = typographic.evaluations(session)
    choices = [{**e, "url": urls.typographic_evals(model=e["model_id"], dataset=e["dataset_id"], labels=e["label_set"])}
               for e in evaluations]
    chosen = None
    if model_id or dataset or labels:
        chosen = next((e for e in evaluations if (not model_id or e["model_id"] == model_id)
                       and (not dataset or e["dataset_id"] == dataset) and (not labels or e["label_set"] == labels)), None)
        if chosen is None:
            raise Problem(404, "unknown-evaluation", "No typographic evaluation of that model, dataset and label set is stored.")
    elif evaluations:
        chosen = evaluations[0]
    attacks: list[dict[str, Any]] = []
    search: list[dict[str, Any]] = []
    if chosen:
        for row in typographic.results(session, chosen["model_id"], chosen["dataset_id"], chosen["label_set"]):
            entry = {"target": row["target"], "text": row["text"], "pixel_cover": row["pixel_cover"], "success": row["success"],
                     "images": row["images"], "setup": row["setup"], "names_target": row["text"].lower() == row["target"].lower()}
            (attacks if row["kind"] == "attack" else search).append(entry)
    return {
        "evaluations": choices,
        "model": chosen["model_id"] if chosen else None,
        "dataset": chosen["dataset_id"] if chosen else None,
        "labels": chosen["label_set"] if chosen else None,
        "attacks": attacks,
        "search": search[:limit],
        "search_total": len(search),
        "missing": [] if evaluations else ["No typographic evaluation has run yet: `microscope precompute typographic-eval`."],
        "model_url": urls.html.model(chosen["model_id"]) if chosen else None,
        "probe_url": urls.html.probe_typographic(model=chosen["model_id"]) if chosen else urls.html.probe_typographic(),
        "api_url": urls.api.typographic_evals(model=model_id, dataset=dataset, labels=labels),
    }
