"""A word-level tokenizer for the toy models' small, closed vocabulary.

open_clip's text tower pools at the argmax of the token ids (it assumes end-of-text has the
highest id, as in CLIP's BPE vocabulary), so end-of-text here is always `vocab_size - 1`,
above every word id, whatever the vocabulary's length (DESIGN.md, "Pitfalls").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

PAD, SOT, UNK = 0, 1, 2
FIRST_WORD_ID = 3


def normalise(text: str) -> list[str]:
    from precompute.world import tokenize_caption

    return tokenize_caption(text)


class WordTokenizer:
    def __init__(self, vocabulary: Sequence[str], vocab_size: int, context_length: int):
        if FIRST_WORD_ID + len(vocabulary) >= vocab_size:
            raise ValueError(f"{len(vocabulary)} words do not fit a text tower of vocab_size {vocab_size}")
        self.vocabulary = list(vocabulary)
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.eot = vocab_size - 1
        self._ids = {word: FIRST_WORD_ID + i for i, word in enumerate(self.vocabulary)}

    def encode(self, text: str) -> list[int]:
        words = [self._ids.get(word, UNK) for word in normalise(text)]
        return [SOT, *words[: self.context_length - 2], self.eot]

    def unknown_words(self, text: str) -> list[str]:
        return [word for word in normalise(text) if word not in self._ids]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        out = torch.full((len(texts), length), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)[:length]
            ids[-1] = self.eot
            out[row, : len(ids)] = torch.tensor(ids)
        return out
