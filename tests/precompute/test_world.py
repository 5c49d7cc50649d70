"""The synthetic world: determinism, vocabulary, captions that tell the truth,
legible pictures, speed, and resumable datasets."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from precompute.world import (
    BACKGROUNDS,
    COLORS,
    COMMON_WORDS,
    EVAL_TEMPLATES,
    INKS,
    NUMBER_WORDS,
    SHAPE_PLURALS,
    SHAPES,
    WORDS,
    Sample,
    WorldConfig,
    available_fonts,
    caption_vocabulary,
    generate,
    generate_batch,
    object_image,
    render_text,
    tokenize_caption,
    typographic_attack_image,
    word_image,
    write_dataset,
)
from precompute.world.render import contrast_ratio
from precompute.world.shapes import draw_mask, placed_polygon

N_SAMPLES = 3000
PLURAL_TO_SHAPE = {p: s for s, p in SHAPE_PLURALS.items()}
LITERAL_MARKERS = {"word", "says", "written", "text", "letters"}
BOTH_MARKERS = {"word", "labeled", "label", "text"}


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return [generate(0, i) for i in range(N_SAMPLES)]


def _rgb(name):
    return np.array(COLORS.get(name) or INKS[name], dtype=float)


def _nearest_color(rgb) -> str:
    return min(COLORS, key=lambda c: np.linalg.norm(np.asarray(rgb, float) - COLORS[c]))


# -- vocabulary ------------------------------------------------------------------

def test_word_lists_are_as_specified():
    assert list(COLORS) == ["red", "green", "blue", "yellow", "orange", "purple", "pink", "brown"]
    assert SHAPES == ("circle", "square", "triangle", "star", "cross", "heart")
    assert NUMBER_WORDS == ("one", "two", "three", "four")
    assert 250 <= len(COMMON_WORDS) <= 400
    assert len(set(COMMON_WORDS)) == len(COMMON_WORDS)
    assert all(w.isalpha() and w.islower() and len(w) <= 8 for w in COMMON_WORDS)
    forbidden = set(COLORS) | set(SHAPES) | set(SHAPE_PLURALS.values()) | set(NUMBER_WORDS) | set(INKS)
    assert not forbidden & set(COMMON_WORDS)
    assert WORDS == tuple(COLORS) + SHAPES + NUMBER_WORDS + COMMON_WORDS


def test_colors_are_well_separated():
    names = list(COLORS)
    d = min(np.linalg.norm(_rgb(a) - _rgb(b)) for i, a in enumerate(names) for b in names[i + 1:])
    assert d > 75


def test_tokenize_caption_drops_quotes_and_punctuation():
    assert tokenize_caption("The word 'apple' written in Blue.") == ["the", "word", "apple", "written", "in", "blue"]
    assert tokenize_caption('A sign that says "STOP"!') == ["a", "sign", "that", "says", "stop"]


def test_caption_vocabulary_is_complete(samples):
    vocab = caption_vocabulary()
    assert vocab == sorted(set(vocab))
    vs = set(vocab)
    missing = Counter(t for s in samples for t in tokenize_caption(s.caption) if t not in vs)
    assert not missing, missing.most_common(10)
    assert set(WORDS) <= vs
    assert set(SHAPE_PLURALS.values()) <= vs
    for c in COLORS:
        for s in SHAPES:
            assert set(tokenize_caption(f"a photo of a {c} {s}")) <= vs
    assert set(tokenize_caption("a photo of the word apple")) <= vs
    for t in EVAL_TEMPLATES:
        filled = t.format(color="red", shape="star", shapes="stars", n="two", w="apple")
        assert set(tokenize_caption(filled)) <= vs


# -- determinism and shape of the data -------------------------------------------

def test_generate_is_deterministic_and_seed_dependent():
    for i in range(20):
        a, b = generate(3, i), generate(3, i)
        assert a.image.tobytes() == b.image.tobytes()
        assert a.caption == b.caption and a.meta == b.meta
    differ = sum(generate(3, i).image.tobytes() != generate(4, i).image.tobytes() for i in range(20))
    assert differ == 20


def test_images_are_rgb_at_the_configured_size(samples):
    assert all(s.image.mode == "RGB" and s.image.size == (64, 64) for s in samples[:200])
    big = generate(0, 5, WorldConfig(image_size=96))
    assert big.image.size == (96, 96)


def test_world_config_validates_fractions():
    with pytest.raises(ValueError):
        WorldConfig(p_object=0.5, p_word=0.5, p_mixed=0.5)
    cfg = WorldConfig(p_object=1.0, p_word=0.0, p_mixed=0.0)
    assert {generate(1, i, cfg).meta["kind"] for i in range(30)} == {"object"}


def test_mixture_of_kinds(samples):
    kinds = Counter(s.meta["kind"] for s in samples)
    config = WorldConfig()
    assert abs(kinds["object"] / N_SAMPLES - config.p_object) < 0.04
    assert abs(kinds["word"] / N_SAMPLES - config.p_word) < 0.04
    assert abs(kinds["mixed"] / N_SAMPLES - config.p_mixed) < 0.04


# -- captions agree with what is drawn ---------------------------------------------

def _mentions(caption):
    toks = tokenize_caption(caption)
    colors = {t for t in toks if t in COLORS}
    shapes = {PLURAL_TO_SHAPE.get(t, t) for t in toks if t in SHAPES or t in PLURAL_TO_SHAPE}
    numbers = {t for t in toks if t in NUMBER_WORDS}
    return toks, colors, shapes, numbers


def test_meta_keys_and_types(samples):
    keys = {"kind", "shape", "color", "count", "word", "word_color", "background", "font"}
    for s in samples[:300]:
        m = s.meta
        assert keys <= set(m)
        assert m["background"] in BACKGROUNDS
        if m["kind"] == "object":
            assert m["shape"] in SHAPES and m["color"] in COLORS and 1 <= m["count"] <= 4
            assert m["word"] is None and m["word_color"] is None
        else:
            assert m["word"] in WORDS and m["word_color"] in set(COLORS) | set(INKS)
            assert m["font"].startswith("DejaVu")
        if m["kind"] == "word":
            assert m["count"] == 0 and m["shape"] is None and m["color"] is None
        if m["kind"] == "mixed":
            assert m["count"] == 1 and m["shape"] in SHAPES and m["color"] in COLORS


def test_captions_only_name_what_is_in_the_picture(samples):
    for s in samples:
        m = s.meta
        toks, colors, shapes, numbers = _mentions(s.caption)
        if m["kind"] == "object":
            assert colors == {m["color"]}, (s.caption, m)
            assert shapes == {m["shape"]}, (s.caption, m)
            assert numbers <= {NUMBER_WORDS[m["count"] - 1]}, (s.caption, m)
            plural = SHAPE_PLURALS[m["shape"]] in toks
            assert plural == (m["count"] > 1), (s.caption, m)
        elif m["kind"] == "word":
            assert m["word"] in toks, (s.caption, m)
            assert colors <= {m["word"], m["word_color"]}, (s.caption, m)
            assert shapes <= {m["word"]} and numbers <= {m["word"]}, (s.caption, m)
        else:
            assert m["word"] in toks, (s.caption, m)
            assert colors <= {m["color"], m["word"]}, (s.caption, m)
            assert shapes <= {m["shape"], m["word"]}, (s.caption, m)
            if BOTH_MARKERS & set(toks):  # the caption describes the object too
                assert m["color"] in toks and m["shape"] in toks, (s.caption, m)


def test_pictures_of_meaning_words_are_often_captioned_by_meaning(samples):
    meaning = set(COLORS) | set(SHAPES) | set(NUMBER_WORDS)
    words = [s for s in samples if s.meta["kind"] == "word"]
    special = [s for s in words if s.meta["word"] in meaning]
    config = WorldConfig()
    assert abs(len(special) / len(words) - config.p_meaning_word) < 0.1
    by_meaning = [s for s in special if not LITERAL_MARKERS & set(tokenize_caption(s.caption))]
    assert abs(len(by_meaning) / len(special) - config.p_meaning_caption) < 0.12

    mixed = [s for s in samples if s.meta["kind"] == "mixed"]
    both = [s for s in mixed if BOTH_MARKERS & set(tokenize_caption(s.caption))]
    assert abs(len(both) / len(mixed) - config.p_mixed_both) < 0.1


# -- pictures ------------------------------------------------------------------

@pytest.mark.parametrize("background", ["white", "black"])
def test_every_shape_and_colour_renders_in_its_colour(background):
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        for color in COLORS:
            s = object_image(shape, color, 1, rng, background=background)
            assert s.meta["background"] == background and s.meta["color"] == color
            a = np.asarray(s.image, dtype=float)
            corner = a[0, 0]
            fg = a[np.abs(a - corner).max(-1) > 60]
            assert len(fg) > 150, (shape, color, len(fg))  # at least ~12x12 px of object
            assert _nearest_color(np.median(fg, 0)) == color, (shape, color, np.median(fg, 0))


def test_several_objects_do_not_overlap():
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        for count in (2, 3, 4):
            s = object_image(shape, "blue", count, rng, background="white")
            a = np.asarray(s.image, dtype=float)
            fg = np.abs(a - a[0, 0]).max(-1) > 60
            # Count connected blobs with a tiny flood fill: touching objects would merge.
            assert _blobs(fg) == count, (shape, count)


def _blobs(mask: np.ndarray, min_px: int = 8) -> int:
    """8-connected blobs of at least ``min_px`` pixels (antialiased star tips
    can leave a stray pixel or two)."""
    seen = np.zeros_like(mask)
    n = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        stack, size = [(y, x)], 0
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            size += 1
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        n += size >= min_px
    return n


def _silhouette(shape, size, angle):
    """Mask cropped to its bounding box and resized to 24x24: scale-free."""
    m = draw_mask([placed_polygon(shape, 32, 32, size, angle)], 64)
    ys, xs = np.nonzero(m > 0.5)
    crop = Image.fromarray((m[ys.min():ys.max() + 1, xs.min():xs.max() + 1] * 255).astype(np.uint8))
    return np.asarray(crop.resize((24, 24), Image.BILINEAR)) > 127


def test_shapes_are_distinct_silhouettes():
    """A nearest-template classifier recognises every shape at every size and
    rotation the world uses, down to 12 px: the shapes are distinguishable."""
    templates = {s: [_silhouette(s, 48, a) for a in range(-15, 16, 5)] for s in SHAPES}
    rng = np.random.default_rng(5)
    for shape in SHAPES:
        for size in (12, 16, 22, 30, 40):
            m = _silhouette(shape, size, rng.uniform(-15, 15))
            iou = {t: max((m & tm).sum() / (m | tm).sum() for tm in tms) for t, tms in templates.items()}
            assert max(iou, key=iou.get) == shape, (shape, size, iou)


def test_backgrounds_are_neutral():
    rng = np.random.default_rng(2)
    for bg in BACKGROUNDS:
        for _ in range(4):
            s = object_image("circle", "red", 1, rng, background=bg)
            a = np.asarray(s.image, dtype=int)
            corners = np.concatenate([a[:4, :4].reshape(-1, 3), a[-4:, -4:].reshape(-1, 3)])
            chroma = corners.max(-1) - corners.min(-1)
            assert chroma.max() <= 40, (bg, chroma.max())


def test_word_image_is_legible_and_spans_the_picture():
    rng = np.random.default_rng(3)
    for word, ink in [("red", "blue"), ("circle", "yellow"), ("umbrella", "black"), ("three", "white")]:
        s = word_image(word, rng, word_color=ink)
        assert s.meta["word"] == word and s.meta["word_color"] == ink and s.meta["kind"] == "word"
        a = np.asarray(s.image, dtype=float)
        inked = np.linalg.norm(a - _rgb(ink), axis=-1) < 80
        assert inked.sum() > 40, (word, inked.sum())
        cols = np.nonzero(inked.any(0))[0]
        assert cols.max() - cols.min() > 0.45 * 64, (word, cols.min(), cols.max())
        ground = a[~(np.linalg.norm(a - _rgb(ink), axis=-1) < 120)].mean(0)
        assert contrast_ratio(_rgb(ink), ground) >= 2.5, (word, ink, ground)


@pytest.mark.parametrize("placement", ["on", "next"])
def test_typographic_attack_image(placement):
    rng = np.random.default_rng(4)
    for shape, color, written in [("circle", "green", "square"), ("star", "yellow", "heart"),
                                  ("heart", "blue", "triangle"), ("square", "brown", "apple")]:
        s = typographic_attack_image(shape, color, written, rng, placement=placement)
        m = s.meta
        assert (m["kind"], m["shape"], m["color"], m["word"]) == ("mixed", shape, color, written)
        assert m["word_color"] in ("black", "white")
        assert written in tokenize_caption(s.caption) and color in tokenize_caption(s.caption)
        a = np.asarray(s.image, dtype=float)
        ink = _rgb(m["word_color"])
        inked = np.linalg.norm(a - ink, axis=-1) < 40
        assert inked.sum() > 40
        cols = np.nonzero(inked.any(0))[0]
        assert cols.max() - cols.min() > 0.4 * 64  # written large enough to read at 64 px
        # The ink contrasts with what lies around the letters.
        ring = np.zeros_like(inked)
        ys, xs = np.nonzero(inked)
        ring[max(ys.min() - 2, 0):ys.max() + 3, max(xs.min() - 2, 0):xs.max() + 3] = True
        around = a[ring & ~inked & (np.linalg.norm(a - ink, axis=-1) > 120)]
        assert contrast_ratio(ink, around.mean(0)) >= 3.0
        obj = np.linalg.norm(a - _rgb(color), axis=-1) < 45
        assert obj.sum() > 150  # the object stays visible


# -- fonts and rastered words ---------------------------------------------------------

def test_available_fonts_finds_dejavu():
    fonts = available_fonts()
    names = {Path(f).name for f in fonts}
    assert {"DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"} <= names
    for f in fonts:
        img = render_text("ab", font_path=f)
        assert np.asarray(img).min() < 100


def test_render_text_centres_and_fits_long_words():
    img = render_text("hello")
    a = np.asarray(img)
    assert img.mode == "RGB" and img.size == (64, 64)
    dark = a.max(-1) < 128
    ys, xs = np.nonzero(dark)
    assert abs((xs.min() + xs.max()) / 2 - 32) < 3 and abs((ys.min() + ys.max()) / 2 - 32) < 4
    long = np.asarray(render_text("extraordinarily")).max(-1) < 128
    assert long.any() and not long[:, :2].any() and not long[:, -2:].any()
    assert render_text("hi", size=128, font_size=20).size == (128, 128)


def test_render_text_is_fast():
    words = list(WORDS)
    for w in words:
        render_text(w)
    t = time.perf_counter()
    for w in words:
        render_text(w)
    rate = len(words) / (time.perf_counter() - t)
    print(f"render_text: {rate:.0f} words/s")
    assert rate >= 1000


def test_generation_is_fast():
    generate(9, 0)
    n = 300
    t = time.perf_counter()
    for i in range(n):
        generate(9, i)
    ms = (time.perf_counter() - t) / n * 1e3
    print(f"generate: {ms:.2f} ms/sample")
    assert ms < 5.0


# -- datasets -----------------------------------------------------------------------

def test_generate_batch_matches_generate():
    images, captions, metas = generate_batch(5, 10, 6)
    assert images.shape == (6, 64, 64, 3) and images.dtype == np.uint8
    for j in range(6):
        s = generate(5, 10 + j)
        assert np.array_equal(images[j], np.asarray(s.image))
        assert captions[j] == s.caption and metas[j] == s.meta


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_write_dataset_and_resume(tmp_path):
    full = write_dataset(tmp_path / "full", count=12, seed=7, progress=False)
    lines = (full / "captions.jsonl").read_text().splitlines()
    assert len(lines) == 12 and len(list((full / "images").glob("*.png"))) == 12
    first = json.loads(lines[0])
    assert first["file"] == "images/0000000.png" and first["caption"] == generate(7, 0).caption
    assert {"kind", "shape", "color", "count", "word", "word_color", "background", "font"} <= set(first)
    with Image.open(full / first["file"]) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(generate(7, 0).image))

    # A run killed part-way: some images, a torn last line, a line whose PNG is gone.
    part = tmp_path / "part"
    write_dataset(part, count=5, seed=7, progress=False)
    (part / "images" / "0000002.png").unlink()
    with open(part / "captions.jsonl", "a") as f:
        f.write('{"file": "images/0000005.png", "capt')
    write_dataset(part, count=12, seed=7, progress=False)
    assert _snapshot(part) == _snapshot(full)

    # Re-running a finished dataset changes nothing; extending it appends.
    write_dataset(part, count=12, seed=7, progress=False)
    assert _snapshot(part) == _snapshot(full)
    write_dataset(part, count=3, seed=7, start=12, progress=False)
    assert len((part / "captions.jsonl").read_text().splitlines()) == 15

    with pytest.raises(ValueError):
        write_dataset(part, count=3, seed=8, progress=False)


def test_a_dataset_written_by_worker_processes_is_the_one_this_process_writes(tmp_path):
    from precompute.world.dataset import PARALLEL_FROM

    count = PARALLEL_FROM + 307  # what is left after the interruption is written in parallel
    serial = write_dataset(tmp_path / "serial", count=count, seed=5, progress=False, workers=1)
    # Interrupted part-way (a picture lost, lines for the first 300 only), then resumed by workers.
    parallel = tmp_path / "parallel"
    write_dataset(parallel, count=300, seed=5, progress=False, workers=1)
    (parallel / "images" / "0000004.png").unlink()
    write_dataset(parallel, count=count, seed=5, progress=False, workers=2)
    assert _snapshot(parallel) == _snapshot(serial)


def test_truthful_labels_name_the_object_and_zero_keeps_the_earlier_world():
    """Colour names that tell the truth are what lets a colour unit learn to read its colour's
    name; shape names stay random so that typographic attacks still work; and
    p_truthful_label=0 reproduces, picture for picture, the world from before the knob existed."""
    def mixed(config):
        metas = [generate(3, i, config).meta for i in range(800)]
        return [m for m in metas if m["kind"] == "mixed"]

    def share(metas, test):
        return sum(map(test, metas)) / len(metas)

    colour_named = [m for m in mixed(WorldConfig(p_truthful_label=1.0)) if m["word"] in COLORS]
    assert colour_named and all(m["word"] == m["color"] for m in colour_named)
    default = mixed(WorldConfig())
    colour_words = [m for m in default if m["word"] in COLORS]
    assert 0.8 < share(colour_words, lambda m: m["word"] == m["color"]) < 0.95  # 0.85 + chance
    shape_words = [m for m in default if m["word"] in SHAPES]
    assert share(shape_words, lambda m: m["word"] != m["shape"]) > 0.7  # random: 5 in 6 are false
    assert 0.35 < len(shape_words) / len(default) < 0.55
    never = [m for m in mixed(WorldConfig(p_truthful_label=0.0)) if m["word"] in COLORS]
    assert share(never, lambda m: m["word"] == m["color"]) < 0.3  # chance: 1 in 8
    with pytest.raises(ValueError):
        WorldConfig(mixed_words=(0.5, 0.5, 0.5, 0.0))
    with pytest.raises(ValueError):
        WorldConfig(p_truthful_label=1.5)
    # Zero draws no random number: pictures 0-199 of world 0 hash as they did before the knob
    # existed (the digest was taken with the code that trained the first toy models).
    digest = hashlib.sha256()
    for i in range(200):
        sample = generate(0, i, WorldConfig(p_truthful_label=0.0, mixed_words=(0.45, 0.20, 0.05, 0.30)))
        digest.update(sample.caption.encode())
        digest.update(sample.image.tobytes())
    assert digest.hexdigest() == "e8ad6bae2869a5bd3f11bc9a9ea0734819083549cfbfec983893bdb65a89a3c9"
