"""Text pools: the texts a neuron's direction is decomposed into, and their embeddings.

A pool is a list of texts and a source that says where it came from and how its texts are
embedded:
- `wordfreq:en:N`: the N most common English words (30,000 is the paper's pool), each
  embedded as it is;
- `open_clip:imagenet`: ImageNet's 1,000 class names, each embedded as CLIP's zero-shot
  classifier embeds it: the mean of the unit-length embeddings of open_clip's 80 prompt
  templates ("a bad photo of a {}."), then unit length again;
- `synthetic-world:vocabulary`: every word the synthetic world can draw or say (what the
  toy models know);
- a file's path: one text per line.

`encode_pool` gives the unit-length embeddings [M, d] in the model's joint space; the
decomposition centres them on the pool's mean (precompute.omp.text_dictionary).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from precompute.errors import MicroscopeError
from precompute.words import WORLD_VOCABULARY_SOURCE, common_words, common_words_source, read_word_file, world_vocabulary

IMAGENET_SOURCE = "open_clip:imagenet"
POOL_KINDS = ("words", "file", "imagenet", "world")
MAX_POOL = 200_000


@dataclass(frozen=True)
class PoolTexts:
    texts: tuple[str, ...]
    source: str
    description: str


def pool_texts(kind: str, *, words: int | None = None, path: str | Path | None = None) -> PoolTexts:
    """The texts of a pool of `kind` (one of POOL_KINDS)."""
    if kind == "words":
        count = 30_000 if words is None else words
        if not 1 <= count <= MAX_POOL:
            raise MicroscopeError(f"--words must be between 1 and {MAX_POOL:,}, not {count}")
        return PoolTexts(tuple(common_words(count)), common_words_source(count), f"the {count:,} commonest English words")
    if kind == "file":
        if path is None:
            raise MicroscopeError("a file pool needs a file")
        texts = read_word_file(path)
        if len(texts) > MAX_POOL:
            raise MicroscopeError(f"{path} holds {len(texts):,} texts; a pool holds at most {MAX_POOL:,}")
        resolved = Path(path).expanduser().resolve()
        return PoolTexts(tuple(texts), str(resolved), resolved.name)
    if kind == "imagenet":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return PoolTexts(tuple(dict.fromkeys(IMAGENET_CLASSNAMES)), IMAGENET_SOURCE,
                         "ImageNet's class names with open_clip's 80 prompt templates")
    if kind == "world":
        return PoolTexts(tuple(world_vocabulary()), WORLD_VOCABULARY_SOURCE, "the synthetic world's vocabulary")
    raise MicroscopeError(f"unknown pool kind {kind!r}; one of {', '.join(POOL_KINDS)}")


def templates_for(source: str) -> tuple[Callable[[str], str], ...] | None:
    """The prompt templates a pool's texts are embedded with, or None for the texts as they are."""
    if source == IMAGENET_SOURCE:
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return tuple(OPENAI_IMAGENET_TEMPLATES)
    return None


@torch.inference_mode()
def encode_texts(model: torch.nn.Module, tokenizer: Callable, texts: Sequence[str], *, batch_size: int = 256,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Unit-length text embeddings [len(texts), d] (float32, on the CPU)."""
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start:start + batch_size])).to(device)
        out.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    if not out:
        raise MicroscopeError("the pool holds no texts")
    return torch.cat(out)


def template_means(encode: Callable[[list[str]], torch.Tensor], names: Sequence[str], templates: Sequence, *,
                   batch_size: int = 1000, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """CLIP's zero-shot class embeddings [names, d]: each name the unit-length mean of the
    unit-length embeddings of its prompts (`templates`: format strings or callables). The one
    definition that zero-shot classification and a templated pool (ImageNet's) share, so that a
    pool's stored embeddings stand in for the live classifier's. `encode` maps prompts to
    embeddings; whole classes go through it together, about `batch_size` prompts at a time."""
    templates = tuple(templates)
    per_batch = max(1, batch_size // max(len(templates), 1))
    rows = []
    for start in range(0, len(names), per_batch):
        chunk = list(names[start:start + per_batch])
        prompts = [template(name) if callable(template) else template.format(name) for name in chunk for template in templates]
        features = F.normalize(encode(prompts).float(), dim=-1).view(len(chunk), len(templates), -1)
        rows.append(F.normalize(features.mean(dim=1), dim=-1))
        if progress:
            progress(len(chunk))
    if not rows:
        raise MicroscopeError("the pool holds no texts")
    return torch.cat(rows)


def encode_pool(model: torch.nn.Module, tokenizer: Callable, texts: Sequence[str], source: str, *,
                batch_size: int = 256, device: torch.device | str = "cpu",
                progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """The pool's unit-length embeddings [M, d], one row per text, with its templates if any
    (a templated text is a class, embedded as the zero-shot classifier embeds it)."""
    templates = templates_for(source)
    if templates is None:
        rows = []
        for start in range(0, len(texts), batch_size):
            rows.append(encode_texts(model, tokenizer, texts[start:start + batch_size], batch_size=batch_size,
                                     device=device))
            if progress:
                progress(len(rows[-1]))
        return torch.cat(rows)
    return template_means(lambda prompts: encode_texts(model, tokenizer, prompts, batch_size=batch_size, device=device),
                          texts, templates, batch_size=max(batch_size, len(templates)), progress=progress)
