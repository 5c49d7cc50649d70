"""Caption templates and the closed caption vocabulary.

The templates imitate how the web captions pictures, because that is what
produces the phenomena we want to reproduce. In particular a picture of a
written word is often captioned by what the word *means* (a sign saying
"pizza" captioned "pizza"), and a labelled object by its label. A world that
only ever said "the word X" would teach the models to keep reading and seeing
apart, and there would be no multimodal neurons and no typographic attacks.

Every template lives in a module-level table so that ``caption_vocabulary`` can
enumerate every token a caption can ever contain.
"""

from __future__ import annotations

import re

import numpy as np

from .backgrounds import BACKGROUNDS
from .vocab import COLORS, INKS, NUMBER_WORDS, SHAPE_PLURALS, SHAPES, WORDS, tokenize_caption

# -- objects ---------------------------------------------------------------
OBJECT_ONE = (
    "a {color} {shape}",
    "a photo of a {color} {shape}",
    "a photo of a {color} {shape}",
    "a picture of a {color} {shape}",
    "a {color} {shape} on a {bg} background",
    "a photo of a {color} {shape} on a {bg} background",
    "one {color} {shape}",
    "a drawing of a {color} {shape}",
    "a {shape} that is {color}",
    "a single {color} {shape}",
    "an image of a {color} {shape}",
    "the {color} {shape}",
    "a {size} {color} {shape}",
    "a {size} {color} {shape} on a {bg} background",
)
OBJECT_MANY = (
    "{n} {color} {shapes}",
    "a photo of {n} {color} {shapes}",
    "a photo of {n} {color} {shapes}",
    "a picture of {n} {color} {shapes}",
    "{n} {color} {shapes} on a {bg} background",
    "there are {n} {color} {shapes}",
    "a group of {n} {color} {shapes}",
    "an image of {n} {color} {shapes}",
    "some {color} {shapes}",
    "{n} {size} {color} {shapes}",
)
SIZE_WORDS = {"big": ("big", "large"), "small": ("small", "little", "tiny")}

# -- written words -----------------------------------------------------------
WORD_LITERAL = (
    "the word '{w}'",
    "the word {w}",
    "the word '{w}' written in {ink}",
    "'{w}' written in {ink} letters",
    "a sign that says {w}",
    "text that says '{w}'",
    "{ink} text that says {w}",
    "the word '{w}' on a {bg} background",
    "a photo of the word {w}",
    "a picture of the word '{w}'",
    "the word {w} in {ink}",
    "{w} written in {ink}",
)
# Captions by meaning, used for about half of the pictures of meaning words.
WORD_MEANING = {
    "color": (
        "{w}",
        "something {w}",
        "the colour {w}",
        "the color {w}",
        "a photo of something {w}",
        "it is {w}",
    ),
    "shape": (
        "a {w}",
        "{w}",
        "a picture of a {w}",
        "a photo of a {w}",
        "a {w} shape",
    ),
    "number": (
        "{w}",
        "the number {w}",
        "number {w}",
    ),
}
# Common words are captioned literally or by the bare word, as a sign would be.
WORD_BARE = ("{w}",)

# -- an object with a word on or beside it -------------------------------------
MIXED_BOTH = {
    "on": (
        "a {color} {shape} with the word '{w}' on it",
        "a {color} {shape} labeled '{w}'",
        "a {color} {shape} and the word {w}",
        "the word '{w}' written on a {color} {shape}",
        "a photo of a {color} {shape} with '{w}' written on it",
        "a {color} {shape} with the text {w}",
        "a {color} {shape} with a label that says {w}",
    ),
    "next": (
        "a {color} {shape} next to the word '{w}'",
        "a {color} {shape} with the word '{w}' beside it",
        "a {color} {shape} labeled '{w}'",
        "a {color} {shape} and the word {w}",
        "a photo of a {color} {shape} and the word '{w}'",
    ),
}
# Captions by what the word says, as a web caption would name a labelled thing.
MIXED_BY_WORD = {
    "shape": ("a {w}", "a picture of a {w}", "a photo of a {w}", "a {color} {w}", "a photo of a {color} {w}"),
    "color": ("{w}", "something {w}", "a {w} {shape}", "a photo of a {w} {shape}", "the colour {w}"),
    "number": ("{w}", "the number {w}"),
    "common": ("{w}",),
}

# Prompt styles the evaluation code uses; listed so that their words are in the
# vocabulary even if no training caption happens to use them.
EVAL_TEMPLATES = (
    "a photo of a {color} {shape}",
    "a photo of a {shape}",
    "a photo of {n} {color} {shapes}",
    "a photo of something {color}",
    "a photo of the word {w}",
    "the word {w}",
    "{w}",
)
_EXTRA_WORDS = (
    "a", "an", "the", "of", "photo", "picture", "image", "word", "text", "with",
    "on", "written", "is", "this", "it", "and", "that", "says", "object", "shape",
    "colour", "color", "number", "something", "thing", "things", "letters",
)

_SLOTS = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "shapes": tuple(SHAPE_PLURALS.values()),
    "n": NUMBER_WORDS,
    "bg": tuple(BACKGROUNDS),
    "w": WORDS,
    "ink": tuple(COLORS) + tuple(INKS),
    "size": tuple(w for ws in SIZE_WORDS.values() for w in ws),
}
_SLOT_RE = re.compile(r"\{(\w+)\}")
_ARTICLE_RE = re.compile(r"\ba (?=[aeiou])")


def _all_templates() -> list[str]:
    out = list(OBJECT_ONE + OBJECT_MANY + WORD_LITERAL + WORD_BARE + EVAL_TEMPLATES)
    for table in (WORD_MEANING, MIXED_BOTH, MIXED_BY_WORD):
        for ts in table.values():
            out.extend(ts)
    return out


def caption_vocabulary() -> list[str]:
    """Every token any caption or evaluation prompt can contain, sorted.

    A word-level tokenizer is built from exactly this list, so it is assembled
    from the template tables themselves rather than maintained by hand.
    """
    vocab: set[str] = set(_EXTRA_WORDS)
    for t in _all_templates():
        for slot in _SLOT_RE.findall(t):
            if slot not in _SLOTS:
                raise KeyError(f"template {t!r} uses unknown slot {slot!r}")
        vocab.update(tokenize_caption(_SLOT_RE.sub(" ", t)))
    for values in _SLOTS.values():
        for v in values:
            vocab.update(tokenize_caption(v))
    vocab.update(tokenize_caption(" ".join(WORDS)))
    return sorted(vocab)


def _choose(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _finish(rng: np.random.Generator, template: str, **slots) -> str:
    text = template.format(**slots)
    text = _ARTICLE_RE.sub("an ", text)
    # Light surface variety; the tokenizer removes it again, so it costs nothing
    # in vocabulary but keeps captions from all looking machine-made.
    r = rng.random()
    if r < 0.15:
        text = text[0].upper() + text[1:]
    elif r < 0.25:
        text = text[0].upper() + text[1:] + "."
    return text


def word_group(word: str) -> str:
    if word in COLORS:
        return "color"
    if word in SHAPE_PLURALS:
        return "shape"
    if word in NUMBER_WORDS:
        return "number"
    return "common"


def object_caption(
    rng: np.random.Generator, color: str, shape: str, count: int, background: str, size: float,
    image_size: int = 64,
) -> str:
    rel = size * 64.0 / image_size
    if count == 1:
        size_key = "big" if rel >= 34 else "small" if rel <= 23 else None
        pool = OBJECT_ONE
    else:
        size_key = "small" if rel <= 14 else None
        pool = OBJECT_MANY
    if size_key is None:
        pool = tuple(t for t in pool if "{size}" not in t)
    t = _choose(rng, pool)
    size_word = _choose(rng, SIZE_WORDS[size_key]) if size_key else ""
    return _finish(
        rng, t, color=color, shape=shape, shapes=SHAPE_PLURALS[shape],
        n=NUMBER_WORDS[count - 1], bg=background, size=size_word,
    )


def word_caption(
    rng: np.random.Generator, word: str, ink: str, background: str, p_meaning: float = 0.5,
    p_bare_common: float = 0.35,
) -> str:
    group = word_group(word)
    if group != "common" and rng.random() < p_meaning:
        t = _choose(rng, WORD_MEANING[group])
    elif group == "common" and rng.random() < p_bare_common:
        t = _choose(rng, WORD_BARE)
    else:
        t = _choose(rng, WORD_LITERAL)
    return _finish(rng, t, w=word, ink=ink, bg=background)


def mixed_caption(
    rng: np.random.Generator, color: str, shape: str, word: str, placement: str,
    p_both: float = 0.6,
) -> str:
    if rng.random() < p_both:
        t = _choose(rng, MIXED_BOTH[placement])
    else:
        t = _choose(rng, MIXED_BY_WORD[word_group(word)])
    return _finish(rng, t, color=color, shape=shape, w=word)
