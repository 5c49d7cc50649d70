"""Rastered words: what each unit responds to when it *reads*, and image-based word embeddings.

Following the Distill article: render each of the 10,000 most common English words black on
white in one fixed font and size, run the images through the vision tower, and read every
unit's activation on every word the same way as on dataset images (spatial maximum,
pre-ReLU where the architecture has it; see `precompute.examples.ranking_values`).

The toy models know only the synthetic world's vocabulary (`precompute.world.WORDS`, a few
hundred words), so most common English words are strangers to them: their meaning shows in
the world's own list, rendered as `microscope toy eval` renders it (`render_text` with its
defaults at the model's 64 px input). Pages show that list first for models trained on the
world and the common-word list first for every other model.

- A unit's top words are the words of highest activation (ties broken by the word's rank in
  the list, so results are exact and reproducible).
- A word's image-based embedding is its activation vector over a layer's units minus the
  mean over all words of the list, which removes the generic "black text on a white
  background" component; nearest neighbours by cosine similarity are then semantically
  related, and word arithmetic such as V(king) - V(man) + V(woman) can be asked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from precompute import keys as K
from precompute.errors import MicroscopeError
from precompute.world.fonts import DEFAULT_FONT, font_path, render_text

DEFAULT_WORD_COUNT = 10_000
DEFAULT_TOP_WORDS = 32
WORLD_VOCABULARY_SOURCE = "synthetic-world:vocabulary"


def common_words_source(count: int = DEFAULT_WORD_COUNT, language: str = "en") -> str:
    """The source recorded for `common_words(count, language)`."""
    return f"wordfreq:{language}:{count}"


def word_list_label(source: str) -> str:
    """A reader's name for a word list, from its source."""
    if source == WORLD_VOCABULARY_SOURCE:
        return "the synthetic world's vocabulary"
    match = re.fullmatch(r"wordfreq:([a-z]+):(\d+)", source)
    if match:
        language = "English" if match[1] == "en" else f"'{match[1]}'"
        return f"the {int(match[2]):,} commonest {language} words"
    return Path(source).name or source


def world_vocabulary() -> list[str]:
    """Every word the synthetic world can draw or say, in the order `microscope toy eval`
    ranks them (colours, shapes and numbers first)."""
    from precompute.world import WORDS

    return list(dict.fromkeys(WORDS))


def trained_on_world(model_source: str, model_arch: str) -> bool:
    """Whether a registered model is one of the toy models, which know only the world's words:
    an embedded checkpoint, or a toy architecture (trained or random)."""
    from precompute.toy import TOY_ARCHITECTURES

    return model_source == "embedded" or model_arch in TOY_ARCHITECTURES.values()


def preferred_word_lists(lists: Sequence[tuple[str, str]], *, world_model: bool) -> list[str]:
    """The ids of (id, source) word lists in the order a page offers them: the world's
    vocabulary first for a model trained on the world, last for any other model; otherwise
    the order given."""
    def rank(item: tuple[int, tuple[str, str]]) -> tuple[int, int]:
        position, (_, source) = item
        is_world = source == WORLD_VOCABULARY_SOURCE
        return (0 if is_world == world_model else 1), position

    return [list_id for _, (list_id, _) in sorted(enumerate(lists), key=rank)]


def common_words(count: int = DEFAULT_WORD_COUNT, language: str = "en") -> list[str]:
    """The `count` most frequent alphabetic words of `language` per the wordfreq package
    (numbers, contractions and punctuation left out), most frequent first."""
    if count < 1:
        raise MicroscopeError("the word count must be at least 1")
    try:
        import wordfreq
    except ImportError:  # pragma: no cover - a dependency of the words command
        raise MicroscopeError("the wordfreq package is needed for the common-word list: pip install wordfreq") from None
    asked = count
    while True:
        ranked = wordfreq.top_n_list(language, asked * 2)
        words = list(dict.fromkeys(w for w in ranked if w.isalpha()))
        if len(words) >= count or len(ranked) < asked * 2:
            break
        asked *= 2
    if len(words) < count:
        raise MicroscopeError(f"wordfreq knows only {len(words)} alphabetic '{language}' words, fewer than {count}")
    return words[:count]


def read_word_file(path: str | Path) -> list[str]:
    """One word (or short phrase) per line; blank lines and lines starting with # are skipped,
    repeats keep their first place."""
    path = Path(path)
    if not path.is_file():
        raise MicroscopeError(f"word file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise MicroscopeError(f"word file {path} is not UTF-8 text") from None
    words = list(dict.fromkeys(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")))
    if not words:
        raise MicroscopeError(f"word file {path} holds no words")
    return words


def word_list_id(source: str, font: str | None, font_size: int | None, image_size: int) -> str:
    """A readable id that changes whenever the rendered images would: source, font, size."""
    face = Path(font or DEFAULT_FONT).stem
    slug = re.sub(r"[^a-z0-9]+", "-", source.lower()).strip("-")[:64] or "words"
    return f"{slug}.{face.lower()}.{font_size or 'auto'}.{image_size}px"


def check_font(font: str | None) -> str:
    try:
        return font_path(font or DEFAULT_FONT)
    except FileNotFoundError as error:
        raise MicroscopeError(str(error).splitlines()[0]) from None


def render_word(word: str, image_size: int, font: str | None = None, font_size: int | None = None) -> Image.Image:
    return render_text(word, size=image_size, font_path=font, font_size=font_size)


def top_words(activations: torch.Tensor, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(units, count) word indices and activations of each unit's top words, from a
    (words, units) activation matrix; ties go to the earlier (more frequent) word."""
    words = activations.shape[0]
    count = min(count, words)
    order = torch.arange(words, dtype=torch.int64).view(1, -1)
    keys = K.top_keys(activations.t().contiguous(), order)
    best = keys.topk(count, dim=1).values
    values, indices, _ = K.decode_top(best)
    return indices.numpy(), values.numpy()


def embeddings(activations: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, mean): each word's activation vector minus the mean over all words."""
    array = activations.numpy() if isinstance(activations, torch.Tensor) else np.asarray(activations)
    mean = array.astype(np.float64).mean(axis=0)
    return (array.astype(np.float64) - mean).astype(np.float32), mean.astype(np.float32)


class WordEmbeddings:
    """Nearest neighbours and arithmetic over one layer's image-based word embeddings."""

    def __init__(self, words: Sequence[str], vectors: np.ndarray, mask: np.ndarray | None = None) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(words):
            raise ValueError("vectors must be (words, units) in the order of `words`")
        self.words = list(words)
        self.index = {word: i for i, word in enumerate(self.words)}
        # Units to ignore (e.g. lexicographic "-ing" detectors, as the article suggests).
        self.mask = np.ones(vectors.shape[1], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        self.vectors = vectors
        masked = vectors[:, self.mask].astype(np.float64)
        norms = np.linalg.norm(masked, axis=1, keepdims=True)
        self._unit = masked / np.where(norms > 0, norms, 1.0)

    def vector(self, word: str) -> np.ndarray:
        if word not in self.index:
            raise MicroscopeError(f"'{word}' is not in this word list")
        return self.vectors[self.index[word]]

    def nearest(self, query: str | np.ndarray, count: int = 10, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """Words of highest cosine similarity to a word or a vector, best first."""
        vector = self.vector(query) if isinstance(query, str) else np.asarray(query, dtype=np.float32)
        masked = vector[self.mask].astype(np.float64)
        norm = np.linalg.norm(masked)
        scores = self._unit @ (masked / norm if norm > 0 else masked)
        skip = {self.index[w] for w in exclude if w in self.index}
        order = np.lexsort((np.arange(len(scores)), -scores))
        return [(self.words[i], float(scores[i])) for i in order if i not in skip][:count]

    def arithmetic(self, positive: Sequence[str], negative: Sequence[str] = (), count: int = 10) -> list[tuple[str, float]]:
        """Nearest words to sum(positive) - sum(negative), the input words left out:
        arithmetic(["king", "woman"], ["man"]) for V(king) - V(man) + V(woman)."""
        if not positive:
            raise MicroscopeError("word arithmetic needs at least one positive word")
        total = np.zeros(self.vectors.shape[1], dtype=np.float64)
        for word in positive:
            total += self.vector(word)
        for word in negative:
            total -= self.vector(word)
        return self.nearest(total.astype(np.float32), count, exclude=[*positive, *negative])
