"""Rendering of the world's three kinds of pictures: objects, words, and objects
with words on them.

All randomness comes from one ``np.random.Generator`` per picture, so a picture
is a pure function of (seed, index) and datasets can be sharded and resumed.
Pictures are composited in float32 at the output size; only coverage masks are
drawn at a higher resolution (shapes 4x, text 2x), which is where antialiasing
matters and where it is cheap.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from .backgrounds import TEXTURED, make_background, pick_background
from .captions import mixed_caption, object_caption, word_caption
from .fonts import CORE_FONTS, font_path, get_font, text_length
from .shapes import draw_mask, extents, placed_polygon
from .vocab import COLORS, COMMON_WORDS, INKS, NUMBER_WORDS, SHAPES

KINDS = ("object", "word", "mixed")


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the world. The defaults are the world the toy models train on;
    change them and you get a different world (and a different dataset)."""

    image_size: int = 64
    # Mixing fractions of the three kinds of pictures.
    p_object: float = 0.45
    p_word: float = 0.25
    p_mixed: float = 0.30
    # Font file names (resolved in the DejaVu folder). Only the fonts-dejavu-core
    # faces by default, so every machine renders identical pixels.
    fonts: tuple[str, ...] = CORE_FONTS
    # Objects: how often a picture holds a single object, and how much the
    # drawing may wobble without making colours or shapes ambiguous.
    p_single_object: float = 0.5
    max_object_rotation: float = 15.0
    max_text_rotation: float = 10.0
    color_jitter: int = 10
    # Word pictures: share showing a colour/shape/number word (the rest show
    # common words), and share of those captioned by meaning.
    p_meaning_word: float = 0.6
    p_meaning_caption: float = 0.7
    # Mixed pictures: share of captions naming both object and word (the rest
    # name the picture by what its word says, as web captions mostly do: a
    # first training run with 0.6 here read too little to fall for typographic
    # attacks), and share with the word on the object rather than beside it.
    p_mixed_both: float = 0.3
    p_word_on_object: float = 0.6
    # What the word of a mixed picture is: a shape name, a colour name, a number word or a
    # common word, with these chances.
    mixed_words: tuple[float, float, float, float] = (0.45, 0.40, 0.05, 0.10)
    # Share of colour names on mixed pictures that tell the truth, naming the object's own
    # colour as labels on real things mostly do. Only in such pictures does a unit that sees a
    # colour fire while that colour's name is in view, so only there can gradient teach it to
    # read the name: the source of multimodal units. Shape names stay random (mostly false),
    # which is what makes typographic attacks work. 0 draws no random number.
    p_truthful_label: float = 0.85

    def __post_init__(self):
        total = self.p_object + self.p_word + self.p_mixed
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"p_object + p_word + p_mixed must be 1, got {total}")
        if abs(sum(self.mixed_words) - 1.0) > 1e-6 or min(self.mixed_words) < 0:
            raise ValueError(f"mixed_words must be four chances summing to 1, got {self.mixed_words}")
        if not 0.0 <= self.p_truthful_label <= 1.0:
            raise ValueError(f"p_truthful_label must be in [0, 1], got {self.p_truthful_label}")
        if self.image_size < 32:
            raise ValueError("image_size below 32 px makes shapes and words illegible")
        if not self.fonts:
            raise ValueError("WorldConfig.fonts must name at least one font")


@dataclass
class Sample:
    """One picture and its caption.

    ``meta`` holds the ground truth the caption was written from: kind
    ('object' | 'word' | 'mixed'), shape, color (the object's, or None), count
    (0 for word pictures), word, word_color (a colour name, 'black' or 'white'),
    background (a name usable as "on a {name} background"), font (the font file
    stem, '' when nothing is written); mixed pictures add placement ('on' |
    'next'). Evaluations select and score pictures from it, never from captions.
    """

    image: Image.Image
    caption: str
    meta: dict = field(default_factory=dict)
    # Object pictures: where the object(s) are, a bool [H, W] array (coverage >= 0.5), for
    # evaluating segmentation; None for other kinds. Not part of the picture's randomness.
    mask: np.ndarray | None = None


# -- helpers -----------------------------------------------------------------

def relative_luminance(rgb) -> float:
    """WCAG relative luminance of an sRGB colour (0 black .. 1 white)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(lin @ np.array([0.2126, 0.7152, 0.0722]))


def contrast_ratio(a, b) -> float:
    """WCAG contrast ratio of two colours (1 .. 21). Used instead of a plain
    luminance difference because it matches legibility: orange on white and
    blue on black both have decent luminance gaps yet are hard to read."""
    la, lb = relative_luminance(a), relative_luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


_INKS_RGB = {**COLORS, **INKS}
# WCAG asks 3.0 for large text; a little less keeps green usable on light grounds.
_MIN_TEXT_CONTRAST = 2.6
_MIN_OBJECT_DISTANCE = 95.0  # RGB distance object colour <-> background mean


def _rgb(name: str) -> np.ndarray:
    return np.array(COLORS.get(name) or INKS[name], dtype=np.float32)


def _uniform_angle(rng: np.random.Generator, limit: float) -> float:
    return float(rng.uniform(-limit, limit))


def _font_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _background(
    rng: np.random.Generator, size: int, kind: str | None, accept, tones=("light", "light", "mid", "dark")
) -> tuple[np.ndarray, str]:
    """Sample backgrounds until ``accept(mean_rgb)`` holds. A background the
    caller named is kept (retoned if textured) even if it never passes, since
    asking for it is a deliberate choice."""
    for _ in range(12):
        k = kind or pick_background(rng)
        tone = str(rng.choice(tones)) if k in TEXTURED else None
        bg = make_background(k, rng, size, tone)
        if accept(bg.mean((0, 1))):
            return bg, k
    return bg, k


def _object_fill(rng: np.random.Generator, color: str, size: int, jitter: int) -> np.ndarray:
    """The object's colour as a (H, W, 3) field: one jittered colour with a faint
    linear shading, so objects look lit rather than pasted, yet keep their hue."""
    base = np.array(COLORS[color], np.float32) + rng.integers(-jitter, jitter + 1, 3)
    ang = rng.uniform(0, 2 * math.pi)
    amp = rng.uniform(0.0, 0.12)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    shade = 1.0 + amp * (x * math.cos(ang) + y * math.sin(ang))
    return np.clip(base * shade[..., None], 0, 255)


def _over(img: np.ndarray, alpha: np.ndarray, color) -> np.ndarray:
    a = alpha[..., None]
    return img * (1.0 - a) + np.asarray(color, np.float32) * a


def _drop_shadow(rng: np.random.Generator, img: np.ndarray, alpha: np.ndarray, scale: float) -> np.ndarray:
    """Darken the background under a shifted copy of the object mask: a cue of
    depth that stays neutral in hue."""
    dx, dy = (int(round(v * scale)) for v in rng.integers(1, 3, 2))
    sh = np.zeros_like(alpha)
    sh[dy:, dx:] = alpha[: alpha.shape[0] - dy, : alpha.shape[1] - dx]
    return img * (1.0 - rng.uniform(0.25, 0.45) * sh[..., None])


def _place(
    rng: np.random.Generator, shape: str, count: int, sizes: list[float], size: int, scale: float,
    max_rotation: float,
) -> list[tuple[float, float, float, float]]:
    """Non-overlapping (cx, cy, size, angle) for ``count`` objects.

    Rejection sampling on exact rotated bounding boxes; when a layout does not
    fit, all objects shrink by 10% and placement restarts, so it always ends.
    """
    gap = 2.0 * scale
    for _ in range(12):
        placed: list[tuple[float, float, float, float, tuple]] = []
        for s in sizes:
            ang = _uniform_angle(rng, max_rotation)
            x0, y0, x1, y1 = extents(shape, s, ang)
            ok = False
            for _ in range(40):
                cx = rng.uniform(1 - x0, size - 1 - x1)
                cy = rng.uniform(1 - y0, size - 1 - y1)
                box = (cx + x0, cy + y0, cx + x1, cy + y1)
                if all(
                    box[0] > b[2] + gap or box[2] < b[0] - gap or box[1] > b[3] + gap or box[3] < b[1] - gap
                    for *_, b in placed
                ):
                    ok = True
                    break
            if not ok:
                break
            placed.append((cx, cy, s, ang, box))
        if len(placed) == count:
            return [p[:4] for p in placed]
        sizes = [s * 0.9 for s in sizes]
    raise RuntimeError("could not place objects")  # unreachable for count <= 4


def _object_sizes(rng: np.random.Generator, count: int, scale: float) -> list[float]:
    lo, hi = {1: (20, 40), 2: (16, 22), 3: (14, 21), 4: (12, 19)}[count]
    base = rng.uniform(lo, hi)
    if count == 1:
        return [base * scale]
    return [base * scale * rng.uniform(0.92, 1.08) for _ in range(count)]


def _text_patches(word: str, path: str, fs2: int, angle: float, stroke2: int = 0):
    """Coverage of ``word`` at 2x resolution, rotated: (ink, halo or None).

    Both patches share one canvas so the halo lines up with the ink."""
    font = get_font(path, fs2)
    l, t, r, b = font.getbbox(word, stroke_width=stroke2)
    pad = 2
    w, h = r - l + 2 * pad, b - t + 2 * pad
    ink = Image.new("L", (w, h), 0)
    ImageDraw.Draw(ink).text((pad - l, pad - t), word, font=font, fill=255)
    halo = None
    if stroke2:
        halo = Image.new("L", (w, h), 0)
        ImageDraw.Draw(halo).text(
            (pad - l, pad - t), word, font=font, fill=255, stroke_width=stroke2, stroke_fill=255
        )
    if angle:
        ink = ink.rotate(angle, resample=Image.BICUBIC, expand=True)
        if halo is not None:
            halo = halo.rotate(angle, resample=Image.BICUBIC, expand=True)
    return ink, halo


def _paste(patch: Image.Image, cx: float, cy: float, size: int) -> np.ndarray:
    """Place a 2x patch centred at (cx, cy) in output pixels, clamped inside the
    image, and return its coverage at output resolution."""
    big = 2 * size
    pw, ph = patch.size
    x = int(round(2 * cx - pw / 2))
    y = int(round(2 * cy - ph / 2))
    x = min(max(x, 0), big - pw) if pw <= big else (big - pw) // 2
    y = min(max(y, 0), big - ph) if ph <= big else (big - ph) // 2
    canvas = Image.new("L", (big, big), 0)
    canvas.paste(patch, (x, y))
    return np.asarray(canvas.reduce(2), dtype=np.float32) * (1.0 / 255.0)


def _font_size_for_width(word: str, path: str, width_px: float, size: int) -> int:
    """Font size (output px) at which ``word`` spans ``width_px``, kept between
    legible and not taller than half the image."""
    ref = 40
    fs = ref * width_px / max(text_length(path, ref, word), 1.0)
    return int(round(min(max(fs, 8 * size / 64), 0.5 * size)))


def _pick_font(rng: np.random.Generator, cfg: WorldConfig, font: str | None) -> str:
    return font_path(font or cfg.fonts[int(rng.integers(len(cfg.fonts)))])


def _contrasting_inks(ground, names) -> list[str]:
    return [n for n in names if contrast_ratio(_INKS_RGB[n], ground) >= _MIN_TEXT_CONTRAST]


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")


# -- the three kinds of pictures -------------------------------------------------

def _render_object(
    rng: np.random.Generator, cfg: WorldConfig, shape: str, color: str, count: int,
    background: str | None = None,
) -> Sample:
    if shape not in SHAPES or color not in COLORS or not 1 <= count <= 4:
        raise ValueError(f"bad object spec {shape!r} {color!r} x{count}")
    S = cfg.image_size
    scale = S / 64.0
    obj = np.array(COLORS[color], np.float32)
    bg, bg_name = _background(
        rng, S, background, lambda m: np.linalg.norm(m - obj) >= _MIN_OBJECT_DISTANCE
    )
    sizes = _object_sizes(rng, count, scale)
    layout = _place(rng, shape, count, sizes, S, scale, cfg.max_object_rotation)
    alpha = draw_mask([placed_polygon(shape, cx, cy, s, a) for cx, cy, s, a in layout], S)
    img = bg
    if rng.random() < 0.25:
        img = _drop_shadow(rng, img, alpha, scale)
    img = img * (1 - alpha[..., None]) + _object_fill(rng, color, S, cfg.color_jitter) * alpha[..., None]
    mean_size = float(np.mean([s for _, _, s, _ in layout]))
    caption = object_caption(rng, color, shape, count, bg_name, mean_size, S)
    meta = dict(
        kind="object", shape=shape, color=color, count=count, word=None, word_color=None,
        background=bg_name, font="",
    )
    return Sample(_to_image(img), caption, meta, mask=alpha >= 0.5)


def _render_word(
    rng: np.random.Generator, cfg: WorldConfig, word: str, word_color: str | None = None,
    background: str | None = None, font: str | None = None,
) -> Sample:
    S = cfg.image_size
    if word_color is not None and word_color not in _INKS_RGB:
        raise ValueError(f"word_color must be one of {sorted(_INKS_RGB)}, got {word_color!r}")
    if word_color is None:
        bg, bg_name = _background(rng, S, background, lambda m: True, tones=("light", "light", "dark"))
        ground = bg.mean((0, 1))
        if rng.random() < 0.45:
            options = _contrasting_inks(ground, INKS)
        else:
            options = _contrasting_inks(ground, COLORS) or _contrasting_inks(ground, INKS)
        word_color = options[int(rng.integers(len(options)))]
    else:
        ink_rgb = _INKS_RGB[word_color]
        bg, bg_name = _background(
            rng, S, background,
            lambda m: contrast_ratio(ink_rgb, m) >= _MIN_TEXT_CONTRAST,
            tones=("light", "dark"),
        )
    path = _pick_font(rng, cfg, font)
    # Long words get the full width: at 64 px their letters are small anyway.
    lo = 0.6 if len(word) < 6 else 0.75
    fs = _font_size_for_width(word, path, rng.uniform(lo, 0.9) * S, S)
    angle = _uniform_angle(rng, cfg.max_text_rotation)
    ink, _ = _text_patches(word, path, 2 * fs, angle)
    while ink.size[0] > 2 * S - 4 and fs > 6:  # rotation widened it past the edge
        fs = int(fs * 0.9)
        ink, _ = _text_patches(word, path, 2 * fs, angle)
    # Random centre, but the whole word stays inside: _paste clamps.
    cx, cy = rng.uniform(0.3, 0.7) * S, rng.uniform(0.3, 0.7) * S
    alpha = _paste(ink, cx, cy, S)
    img = _over(bg, alpha, _rgb(word_color) + rng.integers(-6, 7, 3))
    caption = word_caption(rng, word, word_color, bg_name, cfg.p_meaning_caption)
    meta = dict(
        kind="word", shape=None, color=None, count=0, word=word, word_color=word_color,
        background=bg_name, font=_font_name(path),
    )
    return Sample(_to_image(img), caption, meta)


def _render_mixed(
    rng: np.random.Generator, cfg: WorldConfig, shape: str, color: str, word: str,
    placement: str | None = None, word_color: str | None = None, background: str | None = None,
    p_color_ink: float = 0.25, p_both: float | None = None, fonts: tuple[str, ...] | None = None,
) -> Sample:
    """One object with a word on or beside it: the training counterpart of a
    typographic attack, so the models learn that text on objects is common."""
    if shape not in SHAPES or color not in COLORS:
        raise ValueError(f"bad object spec {shape!r} {color!r}")
    S = cfg.image_size
    scale = S / 64.0
    if placement is None:
        placement = "on" if rng.random() < cfg.p_word_on_object else "next"
    if placement not in ("on", "next"):
        raise ValueError("placement must be 'on' or 'next'")
    obj = np.array(COLORS[color], np.float32)
    bg, bg_name = _background(
        rng, S, background, lambda m: np.linalg.norm(m - obj) >= _MIN_OBJECT_DISTANCE
    )
    fonts = fonts or cfg.fonts
    path = font_path(fonts[int(rng.integers(len(fonts)))])
    angle_t = _uniform_angle(rng, cfg.max_text_rotation * 0.6)
    angle_o = _uniform_angle(rng, cfg.max_object_rotation)

    if placement == "on":
        size = rng.uniform(32, 44) * scale
        fs = _font_size_for_width(word, path, rng.uniform(0.55, 0.85) * S, S)
        fs = min(fs, int(0.34 * S))
        ink_p, halo_p = _text_patches(word, path, 2 * fs, angle_t, stroke2=max(1, round(scale)))
        x0, y0, x1, y1 = extents(shape, size, angle_o)
        ocx = rng.uniform(max(1 - x0, 0.42 * S), min(S - 1 - x1, 0.58 * S))
        ocy = rng.uniform(max(1 - y0, 0.42 * S), min(S - 1 - y1, 0.58 * S))
        tcx, tcy = ocx + rng.uniform(-3, 3) * scale, ocy + rng.uniform(-3, 5) * scale
    else:
        size = rng.uniform(24, 32) * scale
        fs = _font_size_for_width(word, path, rng.uniform(0.6, 0.88) * S, S)
        fs = min(fs, int(0.3 * S))
        ink_p, halo_p = _text_patches(word, path, 2 * fs, angle_t)
        x0, y0, x1, y1 = extents(shape, size, angle_o)
        th = ink_p.size[1] / 2
        gap = rng.uniform(1, 4) * scale
        total = (y1 - y0) + gap + th
        top = rng.uniform(1, max(1.0, S - 1 - total))
        ocx = rng.uniform(max(1 - x0, 0.3 * S), min(S - 1 - x1, 0.7 * S))
        tcx = S / 2 + rng.uniform(-0.12, 0.12) * S
        if rng.random() < 0.65:  # word below the object
            ocy = top - y0
            tcy = top + (y1 - y0) + gap + th / 2
        else:
            tcy = top + th / 2
            ocy = top + th + gap - y0

    alpha_o = draw_mask([placed_polygon(shape, ocx, ocy, size, angle_o)], S)
    img = bg
    if rng.random() < 0.25:
        img = _drop_shadow(rng, img, alpha_o, scale)
    img = img * (1 - alpha_o[..., None]) + _object_fill(rng, color, S, cfg.color_jitter) * alpha_o[..., None]
    alpha_t = _paste(ink_p, tcx, tcy, S)

    # Ink is chosen against what actually lies under the word, object included.
    under = alpha_t > 0.3
    ground = img[under].mean(0) if under.any() else bg.mean((0, 1))
    if word_color is None:
        word_color = max(INKS, key=lambda n: contrast_ratio(INKS[n], ground))
        if rng.random() < p_color_ink:
            # A coloured ink must stand out from the object and from the
            # background alike, or the word is lost where it crosses the edge.
            options = [
                c for c in _contrasting_inks(ground, [c for c in COLORS if c != color])
                if contrast_ratio(COLORS[c], obj) >= _MIN_TEXT_CONTRAST
                and contrast_ratio(COLORS[c], bg.mean((0, 1))) >= _MIN_TEXT_CONTRAST
            ]
            if options:
                word_color = options[int(rng.integers(len(options)))]
    if halo_p is not None:
        # A thin halo of the opposite ink keeps the word legible where it
        # crosses from the object onto the background.
        halo_name = "white" if relative_luminance(_INKS_RGB[word_color]) < 0.18 else "black"
        img = _over(img, 0.75 * _paste(halo_p, tcx, tcy, S), _rgb(halo_name))
    img = _over(img, alpha_t, _rgb(word_color))

    p = cfg.p_mixed_both if p_both is None else p_both
    caption = mixed_caption(rng, color, shape, word, placement, p)
    meta = dict(
        kind="mixed", shape=shape, color=color, count=1, word=word, word_color=word_color,
        background=bg_name, font=_font_name(path), placement=placement,
    )
    return Sample(_to_image(img), caption, meta)


# -- public renderers -------------------------------------------------------------

# Bold faces only: an attack should fail or succeed on what the word says, not
# on whether thin strokes survived the trip to 64 px.
ATTACK_FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf")

def object_image(
    shape: str, color: str, count: int, rng: np.random.Generator, image_size: int = 64,
    background: str | None = None,
) -> Sample:
    """``count`` objects of one shape and colour, as in the training world."""
    return _render_object(rng, WorldConfig(image_size=image_size), shape, color, count, background)


def word_image(
    word: str, rng: np.random.Generator, image_size: int = 64, word_color: str | None = None,
    background: str | None = None, font: str | None = None,
) -> Sample:
    """A written word as in the training world; ``word_color`` is a colour name
    or 'black'/'white', ``font`` a DejaVu file name or path."""
    return _render_word(rng, WorldConfig(image_size=image_size), word, word_color, background, font)


def typographic_attack_image(
    shape: str, color: str, written_word: str, rng: np.random.Generator, image_size: int = 64,
    placement: str = "on",
) -> Sample:
    """A single object with ``written_word`` written across it (or, with
    placement='next', right under or over it) in black or white, whichever
    contrasts with what lies beneath. The caption names both truthfully; the
    attack is whether a model's zero-shot label follows the word."""
    return _render_mixed(
        rng, WorldConfig(image_size=image_size), shape, color, written_word,
        placement=placement, p_color_ink=0.0, p_both=1.0, fonts=ATTACK_FONTS,
    )


# -- the world ---------------------------------------------------------------------

_SPECIAL_GROUPS = (tuple(COLORS), SHAPES, NUMBER_WORDS)


def _pick_word_for_word_image(rng: np.random.Generator, cfg: WorldConfig) -> str:
    if rng.random() < cfg.p_meaning_word:
        group = _SPECIAL_GROUPS[int(rng.choice(3, p=(0.4, 0.35, 0.25)))]
        return group[int(rng.integers(len(group)))]
    return COMMON_WORDS[int(rng.integers(len(COMMON_WORDS)))]


def _pick_word_for_mixed(rng: np.random.Generator, cfg: WorldConfig, color: str) -> str:
    p_shape, p_color, p_number, _ = cfg.mixed_words
    r = rng.random()
    if r < p_shape:  # shape words: the typographic attack we measure
        return SHAPES[int(rng.integers(len(SHAPES)))]
    if r < p_shape + p_color:
        if cfg.p_truthful_label and rng.random() < cfg.p_truthful_label:
            return color
        return tuple(COLORS)[int(rng.integers(len(COLORS)))]
    if r < p_shape + p_color + p_number:
        return NUMBER_WORDS[int(rng.integers(len(NUMBER_WORDS)))]
    return COMMON_WORDS[int(rng.integers(len(COMMON_WORDS)))]


def sample_from_rng(rng: np.random.Generator, config: WorldConfig = WorldConfig()) -> Sample:
    """One random picture of the world drawn with ``rng``."""
    r = rng.random()
    if r < config.p_object:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = tuple(COLORS)[int(rng.integers(len(COLORS)))]
        count = 1 if rng.random() < config.p_single_object else int(rng.integers(2, 5))
        return _render_object(rng, config, shape, color, count)
    if r < config.p_object + config.p_word:
        return _render_word(rng, config, _pick_word_for_word_image(rng, config))
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color = tuple(COLORS)[int(rng.integers(len(COLORS)))]
    return _render_mixed(rng, config, shape, color, _pick_word_for_mixed(rng, config, color))


def generate(seed: int, index: int, config: WorldConfig = WorldConfig()) -> Sample:
    """Picture ``index`` of the world ``seed``.

    It depends on (seed, index, config) only, never on what was generated
    before, so any shard of a dataset can be produced anywhere, in any order,
    and a crashed run can resume mid-way. Train and held-out worlds differ by
    seed.
    """
    return sample_from_rng(np.random.default_rng([int(seed), int(index)]), config)
