"""A procedural world of coloured shapes and written words, with captions.

It exists to train tiny CLIP models that show, at 64 px and in minutes, the
phenomena of "Multimodal Neurons in Artificial Neural Networks": units that
fire for both a red object and the written word "red", reading, and
typographic attacks. Pure Python (Pillow + numpy); fonts come from the system
package fonts-dejavu-core.
"""

from .backgrounds import BACKGROUNDS
from .captions import EVAL_TEMPLATES, caption_vocabulary
from .dataset import generate_batch, write_dataset
from .fonts import CORE_FONTS, DEFAULT_FONT, available_fonts, render_text
from .render import (
    KINDS,
    Sample,
    WorldConfig,
    generate,
    object_image,
    sample_from_rng,
    typographic_attack_image,
    word_image,
)
from .vocab import (
    COLORS,
    COMMON_WORDS,
    INKS,
    NUMBER_WORDS,
    SHAPE_PLURALS,
    SHAPES,
    WORDS,
    tokenize_caption,
)

__all__ = [
    "BACKGROUNDS", "COLORS", "COMMON_WORDS", "CORE_FONTS", "DEFAULT_FONT", "EVAL_TEMPLATES",
    "INKS", "KINDS", "NUMBER_WORDS", "SHAPES", "SHAPE_PLURALS", "Sample", "WORDS", "WorldConfig",
    "available_fonts", "caption_vocabulary", "generate", "generate_batch", "object_image",
    "render_text", "sample_from_rng", "tokenize_caption", "typographic_attack_image",
    "word_image", "write_dataset",
]
