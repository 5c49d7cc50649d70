"""Zero-shot classification against a label set, as CLIP classifies ImageNet.

A label set is a list of class names and the prompts that name each class:

  - ``imagenet``: ImageNet's 1,000 class names with OpenAI's 80 prompt templates (both ship
    with open_clip), each class the normalised mean of its prompts' embeddings;
  - ``world`` (the synthetic world's 48 colour x shape classes), ``world-shapes`` (its six
    shapes) and ``world-colors`` (its eight colours), named by the world's prompt ensemble
    (`precompute.toy.evaluate.class_text_features`); a shape is the mean of its colour x shape
    classes over the colours, a colour the mean over the shapes;
  - the user's own labels (two or more), with OpenAI's templates for a real CLIP, and the
    world's singular templates for a toy model, whose word-level vocabulary knows no others.

Class text embeddings are cached per (model, label set): the text tower runs once per pair.
ImageNet's 80,000 prompts take hours through a CPU's text tower, so a real CLIP's ImageNet
classes are read instead from a text pool's stored embeddings (`precompute.text_pools`, the
same definition, `template_means`): the caller attaches them to the label set
(`LabelSet.with_features`, `from_pool`), and a label set carrying features never reaches the
text tower. `prompt_count` says how many prompts a label set costs a model live.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from precompute.errors import Problem
from precompute.registry import LoadedModel

WORLD_SETS = ("world", "world-shapes", "world-colors")
BUILTIN_SETS = (*WORLD_SETS, "imagenet")
MAX_USER_LABELS = 1000
MAX_LABEL_CHARS = 64
# The world's singular prompts with a free class name: what a toy tokenizer can read.
TOY_USER_TEMPLATES = ("a photo of a {}", "a {}", "a picture of a {}")
# Prompts a live request may send through a real CLIP's text tower: a few minutes on a busy CPU
# at most; a bigger label set needs its embeddings stored first (a text pool) or fewer labels.
LIVE_PROMPT_LIMIT = 2000
OPENAI_TEMPLATE_COUNT = 80  # len(open_clip.OPENAI_IMAGENET_TEMPLATES), without importing open_clip


@dataclass(frozen=True)
class LabelSet:
    """A named list of classes. `id` is a built-in set's name or `user-<hash>` for user labels."""

    id: str
    names: tuple[str, ...]
    # [classes, d] unit-length class embeddings read from the store, used instead of the text tower
    features: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @property
    def user(self) -> bool:
        return self.id not in BUILTIN_SETS

    def with_features(self, features: torch.Tensor) -> "LabelSet":
        if features.ndim != 2 or features.shape[0] != len(self.names):
            raise ValueError(f"class embeddings of {self.id!r} must be [{len(self.names)}, d], got {tuple(features.shape)}")
        return replace(self, features=F.normalize(features.float(), dim=-1))

    def index(self, name: str) -> int:
        """The class called `name` (any case), or a 422 naming the set."""
        folded = name.strip().lower()
        for i, candidate in enumerate(self.names):
            if candidate.lower() == folded:
                return i
        raise Problem(422, "unknown-class", f"label set {self.id!r} has no class {name!r}")


def world_names(set_id: str) -> tuple[str, ...]:
    from precompute.world import COLORS, SHAPES

    if set_id == "world-shapes":
        return tuple(SHAPES)
    if set_id == "world-colors":
        return tuple(COLORS)
    return tuple(f"{color} {shape}" for color in COLORS for shape in SHAPES)


def label_set(spec: str | None = None, labels: list[str] | tuple[str, ...] | None = None) -> LabelSet:
    """The label set `spec` names (a built-in set), or one of the user's `labels`.

    Refusals are 422 Problems with a reason: fewer than two labels, a repeated or empty
    label, an unknown set name."""
    if labels:
        cleaned = [label.strip() for label in labels]
        if any(not label for label in cleaned):
            raise Problem(422, "empty-label", "a label is empty")
        if any(len(label) > MAX_LABEL_CHARS for label in cleaned):
            raise Problem(422, "label-too-long", f"labels are at most {MAX_LABEL_CHARS} characters")
        if len(cleaned) < 2:
            raise Problem(422, "too-few-labels", "a label set needs at least two labels to choose between")
        if len(cleaned) > MAX_USER_LABELS:
            raise Problem(422, "too-many-labels", f"a label set has at most {MAX_USER_LABELS} labels")
        if len({label.lower() for label in cleaned}) != len(cleaned):
            raise Problem(422, "repeated-label", "each label may appear only once")
        digest = hashlib.sha256("\n".join(cleaned).encode()).hexdigest()[:12]
        return LabelSet(f"user-{digest}", tuple(cleaned))
    spec = (spec or "world-shapes").strip()
    if spec in WORLD_SETS:
        return LabelSet(spec, world_names(spec))
    if spec == "imagenet":
        import open_clip

        return LabelSet("imagenet", tuple(open_clip.IMAGENET_CLASSNAMES))
    raise Problem(422, "unknown-label-set", f"no label set {spec!r}; built-in sets: {', '.join(BUILTIN_SETS)}, or give your own labels")


def pool_source(labels: LabelSet, toy: bool) -> str | None:
    """The text-pool source whose stored embeddings are this label set's class embeddings for a
    model, or None: ImageNet's pool embeds each class as a real CLIP's zero-shot classifier does
    (OpenAI's templates); a toy model names classes with the world's templates instead."""
    from precompute.text_pools import IMAGENET_SOURCE

    return IMAGENET_SOURCE if labels.id == "imagenet" and not toy else None


def from_pool(labels: LabelSet, texts, vectors) -> LabelSet | None:
    """The label set with its class embeddings read from a pool's stored [texts, d] `vectors`
    (row i embeds texts[i]; a name that appears twice in the set, as two of ImageNet's do, reads
    the one row), or None when the pool lacks one of the set's names."""
    import numpy as np

    row = {text: i for i, text in enumerate(texts)}
    if any(name not in row for name in labels.names):
        return None
    matrix = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    return labels.with_features(matrix[[row[name] for name in labels.names]])


def prompt_count(labels: LabelSet, toy: bool) -> int:
    """Prompts the text tower encodes to name `labels` live (the world's sets: its ensemble)."""
    if labels.id in WORLD_SETS:
        from precompute.toy.evaluate import PLURAL_TEMPLATES, SINGULAR_TEMPLATES

        return len(world_names("world")) * (len(SINGULAR_TEMPLATES) + len(PLURAL_TEMPLATES))
    return len(labels.names) * (len(TOY_USER_TEMPLATES) if toy else OPENAI_TEMPLATE_COUNT)


def is_toy(loaded: LoadedModel) -> bool:
    """Whether `loaded` is one of our toy models (a word-level tokenizer, the world's templates)."""
    return hasattr(loaded.tokenizer, "unknown_words")


def _check_vocabulary(loaded: LoadedModel, texts: list[str]) -> None:
    if not is_toy(loaded):
        return
    unknown = sorted({word for text in texts for word in loaded.tokenizer.unknown_words(text)})
    if unknown:
        shown = ", ".join(unknown[:12]) + (" ..." if len(unknown) > 12 else "")
        raise Problem(422, "unknown-words", f"{loaded.model_id} does not know the words {shown}", unknown_words=unknown[:100])


@torch.inference_mode()
def _prompt_means(loaded: LoadedModel, names: tuple[str, ...], templates, batch: int = 1000) -> torch.Tensor:
    from precompute.text_pools import template_means
    from precompute.toy.evaluate import encode_texts

    _check_vocabulary(loaded, [template(name) if callable(template) else template.format(name)
                               for name in names for template in templates])
    return template_means(lambda prompts: encode_texts(loaded, prompts), names, templates, batch_size=batch)


def _stored(loaded: LoadedModel, labels: LabelSet) -> torch.Tensor:
    features = labels.features
    dimension = getattr(getattr(loaded.model, "visual", None), "output_dim", None)
    if dimension is not None and features.shape[1] != dimension:
        raise Problem(409, "stale-text-embeddings", f"the stored class embeddings of {labels.id!r} have {features.shape[1]} "
                      f"dimensions, {loaded.model_id}'s joint space {dimension}; compute them again for this model")
    return features.to(loaded.device)


def _build(loaded: LoadedModel, labels: LabelSet) -> torch.Tensor:
    from precompute.world import COLORS, SHAPES

    if labels.id in WORLD_SETS:
        if not is_toy(loaded):
            raise Problem(422, "world-labels-need-toy-model", "the world's label sets name the synthetic world's classes; use a toy model")
        from precompute.toy.evaluate import class_text_features

        features = class_text_features(loaded).view(len(COLORS), len(SHAPES), -1)
        if labels.id == "world-shapes":
            return F.normalize(features.mean(dim=0), dim=-1)
        if labels.id == "world-colors":
            return F.normalize(features.mean(dim=1), dim=-1)
        return features.reshape(len(COLORS) * len(SHAPES), -1)
    if is_toy(loaded):
        return _prompt_means(loaded, labels.names, TOY_USER_TEMPLATES)
    import open_clip

    return _prompt_means(loaded, labels.names, open_clip.OPENAI_IMAGENET_TEMPLATES)


class TextFeatureCache:
    """Class text embeddings per (model, label set), least recently used evicted."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.builds = 0

    @staticmethod
    def key(loaded: LoadedModel, labels: LabelSet | Hashable) -> tuple:
        weights = loaded.checkpoint_sha256 or loaded.pretrained_tag or loaded.source
        return (loaded.model_id, loaded.spec.name, weights, id(loaded.model), getattr(labels, "id", labels))

    def get(self, loaded: LoadedModel, labels: LabelSet) -> torch.Tensor:
        if labels.features is not None:  # read from the store: no text tower, nothing to keep
            return _stored(loaded, labels)
        return self.get_keyed(loaded, labels.id, lambda: _build(loaded, labels))

    def get_keyed(self, loaded: LoadedModel, name: Hashable, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Any text embedding of `loaded` under `name` (a label set's id, or a tuple naming what
        `build` encodes), built once."""
        key = self.key(loaded, name)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        features = build()
        with self._lock:
            self.builds += 1
            self._items[key] = features
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return features


DEFAULT_CACHE = TextFeatureCache()


def class_features(loaded: LoadedModel, labels: LabelSet, cache: TextFeatureCache | None = None) -> torch.Tensor:
    """(classes, dim) unit vectors naming `labels` for `loaded`: the label set's stored
    features when it carries them, otherwise from the cache."""
    return (cache or DEFAULT_CACHE).get(loaded, labels)


def logit_scale(loaded: LoadedModel) -> float:
    scale = getattr(loaded.model, "logit_scale", None)
    return float(scale.exp()) if scale is not None else 100.0


def probabilities(loaded: LoadedModel, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """(images, classes) softmax of the model's scaled cosine similarities."""
    logits = logit_scale(loaded) * F.normalize(image_features.float(), dim=-1) @ text_features.float().t().to(image_features.device)
    return logits.softmax(dim=-1)


@torch.inference_mode()
def classify_pixels(loaded: LoadedModel, pixels: torch.Tensor, labels: LabelSet, cache: TextFeatureCache | None = None) -> torch.Tensor:
    """Class probabilities of a batch of preprocessed images."""
    image_features = loaded.model.encode_image(pixels.to(loaded.device))
    return probabilities(loaded, image_features, class_features(loaded, labels, cache)).cpu()


def classify(loaded: LoadedModel, images: list, labels: LabelSet, batch_size: int = 256,
             cache: TextFeatureCache | None = None) -> torch.Tensor:
    """Class probabilities (images, classes) of PIL images."""
    parts = []
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([loaded.preprocess(image) for image in images[start:start + batch_size]])
        parts.append(classify_pixels(loaded, pixels, labels, cache))
    return torch.cat(parts) if parts else torch.empty(0, len(labels.names))


def top_classes(labels: LabelSet, probs: torch.Tensor, k: int = 5) -> list[dict]:
    """The `k` most likely classes of one image's probabilities, most likely first."""
    values, indices = probs.topk(min(k, probs.numel()))
    return [{"label": labels.names[int(i)], "index": int(i), "probability": round(float(v), 5)} for v, i in zip(values, indices)]
