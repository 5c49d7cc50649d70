"""Fonts and fast word rasterisation.

Fonts come from the system package fonts-dejavu-core and are never downloaded:
the world must build offline and identically everywhere. FreeType font objects
are cached because opening a .ttf costs far more than drawing a word, and the
Microscope rasters thousands of vocabulary words per model.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Directories searched in order. MICROSCOPE_FONT_DIR lets a machine without the
# Debian layout point at a folder holding the same DejaVu files.
_FONT_DIRS = (
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/dejavu",  # Fedora, Arch
    "/usr/share/fonts/TTF",
    "/usr/local/share/fonts/dejavu",
)

# The six faces shipped by fonts-dejavu-core. The world draws only from these by
# default so that a dataset generated on one machine is pixel-identical to the
# same dataset generated on another (the Oblique faces come from
# fonts-dejavu-extra, which not every machine has).
CORE_FONTS: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
)
OPTIONAL_FONTS: tuple[str, ...] = (
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
)

# Bold survives the shrink to 64 px far better than the regular weight, which
# matters because rastered words are shown to the model at that size.
DEFAULT_FONT = "DejaVuSans-Bold.ttf"

_INSTALL_HINT = (
    "No DejaVu TrueType fonts found (looked in {dirs}). Install them with "
    "`apt-get install fonts-dejavu-core` (or set MICROSCOPE_FONT_DIR to a folder "
    "holding DejaVuSans.ttf and friends); fonts are never downloaded."
)


def _search_dirs() -> list[Path]:
    dirs = [Path(d) for d in _FONT_DIRS]
    extra = os.environ.get("MICROSCOPE_FONT_DIR")
    if extra:
        dirs.insert(0, Path(extra))
    return dirs


@lru_cache(maxsize=None)
def _find(name: str) -> str | None:
    for d in _search_dirs():
        p = d / name
        if p.is_file():
            return str(p)
    return None


def available_fonts() -> list[str]:
    """Paths of the usable DejaVu fonts: the core faces first, then the oblique
    faces that happen to be installed.

    Raises FileNotFoundError with the install command when none is present,
    because silently falling back to PIL's bitmap font would change every image.
    """
    found = [p for p in (_find(n) for n in CORE_FONTS + OPTIONAL_FONTS) if p]
    if not found:
        raise FileNotFoundError(_INSTALL_HINT.format(dirs=", ".join(map(str, _search_dirs()))))
    return found


def font_path(name_or_path: str) -> str:
    """Resolve a font file name (``DejaVuSans.ttf``) or a path to a real path."""
    if os.sep in name_or_path and os.path.isfile(name_or_path):
        return name_or_path
    p = _find(os.path.basename(name_or_path))
    if p is None:
        fonts = available_fonts()  # raises the install hint when nothing is there
        raise FileNotFoundError(f"font {name_or_path!r} not found; available: {fonts}")
    return p


@lru_cache(maxsize=4096)
def get_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """A cached FreeType font: loading one is ~100x the cost of drawing a word."""
    return ImageFont.truetype(path, size=max(1, int(size)))


@lru_cache(maxsize=65536)
def text_length(path: str, size: int, word: str) -> float:
    """Advance width of ``word``; cached because the world measures the same few
    hundred words over and over to size them."""
    return get_font(path, size).getlength(word)


def render_text(
    word: str,
    size: int = 64,
    font_path: str | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """Black ``word`` centred on a white ``size`` x ``size`` RGB square.

    This is the canonical raster used to ask a vision tower how it responds to a
    written word, so it is deliberately plain: one fixed font by default, no
    jitter. The font shrinks until the word fits 90% of the width, so long words
    are never clipped (a clipped word would be a different word).
    """
    path = _resolve(font_path)
    fs = int(font_size) if font_size else max(6, round(size * 0.375))
    max_w = 0.9 * size
    w = text_length(path, fs, word)
    if w > max_w:
        fs = max(4, int(fs * max_w / w))
        while fs > 4 and text_length(path, fs, word) > max_w:
            fs -= 1
    img = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(img).text(
        (size / 2, size / 2), word, font=get_font(path, fs), fill=(0, 0, 0), anchor="mm"
    )
    return img


@lru_cache(maxsize=64)
def _resolve(name: str | None) -> str:
    return font_path(name or DEFAULT_FONT)
