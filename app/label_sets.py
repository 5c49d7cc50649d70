"""The label set a live request classifies with, and where its class embeddings come from.

A real CLIP names each class by 80 prompts through its text tower: ImageNet's 1,000 classes are
80,000 prompts, hours on a CPU, and the model service has one thread. So a live request reads a
big label set's class embeddings from the store (a text pool's embeddings under the model, the
same definition: precompute.text_pools.template_means) and hands them to the model service with
the label set; when the store has none it is refused with the command that computes them,
rather than holding the service for minutes. Small label sets (the world's, a few labels of the
user's) are encoded live as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session

from app.pages.probe import toy_arch
from precompute.errors import Problem
from precompute.zeroshot import LIVE_PROMPT_LIMIT, OPENAI_TEMPLATE_COUNT, LabelSet, pool_source, prompt_count
from store.blobs import BlobStore
from store.text_pools import pools_from, stored_label_set


def _vectors(request: Request, uri: str) -> Any:
    """A pool's stored embeddings, read once per process (blob names are content addressed)."""
    state = request.app.state
    if not hasattr(state, "pool_embeddings"):
        from app.cache import TTLCache

        state.pool_embeddings = TTLCache(None, 8)
    blobs: BlobStore = state.blobs

    def load() -> Any:
        from app.vectors import load_npy

        return load_npy(blobs, uri)

    return state.pool_embeddings.get(("pool-embeddings", uri), load)


def stored_labels(session: Session, model: dict[str, Any], labels: LabelSet,
                  read: Callable[[str], Any]) -> LabelSet | None:
    """`labels` carrying the class embeddings the store holds for them under `model` (a
    store.queries model row), or None; `read` gives a blob's [texts, d] array by its name."""
    return stored_label_set(session, None, model["id"], labels, toy_arch(model.get("arch")), read)


def live_labels(request: Request, session: Session, model: dict[str, Any], labels: LabelSet, *,
                required: bool = True) -> LabelSet:
    """`labels` for `model`, carrying the class embeddings the store holds for them.
    `required`: the request will classify with them, so a real CLIP's label set too big to
    encode live and not stored is refused (422, naming the command that stores it)."""
    stored = stored_labels(session, model, labels, lambda uri: _vectors(request, uri))
    if stored is not None:
        return stored
    toy = toy_arch(model.get("arch"))
    source = pool_source(labels, toy)
    prompts = prompt_count(labels, toy)
    if not required or toy or prompts <= LIVE_PROMPT_LIMIT:
        return labels
    if source is None:
        raise Problem(422, "too-many-labels-live",
                      f"{len(labels.names):,} labels are {prompts:,} prompts through {model['id']}'s text tower "
                      f"({OPENAI_TEMPLATE_COUNT} a label), minutes or more for a live request; give at most "
                      f"{LIVE_PROMPT_LIMIT // OPENAI_TEMPLATE_COUNT} labels", prompts=prompts, limit=LIVE_PROMPT_LIMIT)
    pool_id = next(iter(pools_from(session, source)), "imagenet")  # ImageNet's is the one pool source of a label set
    command = f"microscope textpools add {pool_id} --imagenet --model {model['id']}"
    raise Problem(422, "no-text-embeddings",
                  f"{model['id']} has no stored text embeddings of the {labels.id} label set, whose {prompts:,} prompts "
                  f"take too long through the text tower for a live request; store them once with `{command}`, "
                  "or give your own labels", command=command, prompts=prompts, limit=LIVE_PROMPT_LIMIT)
