"""/cues: words that could push a picture of one class toward another (spurious cues, `004_…`
section 5.1), with the neurons behind each, and, on the toy models, how often each word written
on world pictures of the first class moves the model's prediction to the second."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.pages.discover import _Units
from app.urls import Urls
from store import queries

SUCCESS = 0.3  # a cue that moves at least this share of the pictures is said to work


def cues_form(session: Session, urls: Urls, *, model_id: str | None = None) -> dict[str, Any]:
    models = queries.models_page(session, 0, 1000)
    chosen = model_id or (models[0]["id"] if models else None)
    arch = next((m["arch"] for m in models if m["id"] == chosen), "")
    toy = arch.startswith("toy")
    return {"models": [{"id": m["id"], "arch": m["arch"]} for m in models], "model": chosen,
            "source": "cross" if toy else "cat", "target": "square" if toy else "dog",
            "api_url": urls.api.cues(model=chosen)}


def cues_result(session: Session, urls: Urls, *, model_id: str, source: str, target: str, layers: list[str], labels: str,
                live: dict[str, Any]) -> dict[str, Any]:
    units = _Units(session, urls, model_id)
    wanted: dict[str, set[int]] = {}
    for cue in live["cues"]:
        for n in cue["neurons"]:
            wanted.setdefault(n["layer"], set()).add(n["unit"])
    for layer, indices in wanted.items():
        units.want(layer, indices)
    rates = (live.get("verified") or {}).get("rates")
    rows = []
    for i, cue in enumerate(live["cues"]):
        rate = rates[i] if rates is not None else None
        rows.append({"text": cue["text"], "score": round(cue["score"], 5),
                     "similarity_to_target": round(cue["similarity_to_target"], 4),
                     "moved": None if rate is None else round(rate, 4),
                     "works": None if rate is None else rate >= SUCCESS,
                     "neurons": [{**units.entry(n["layer"], n["unit"]), "coefficient": round(n["coefficient"], 5),
                                  "alignment": round(n["alignment"], 5)} for n in cue["neurons"]]})
    working = [r["text"] for r in rows if r["works"]]
    return {"model": model_id, "source": source, "target": target, "layers": layers, "labels": labels, "cues": rows,
            "verified_on": (live.get("verified") or {}).get("pictures"), "working": working,
            "success_share": SUCCESS}
