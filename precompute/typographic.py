"""Typographic attacks: write a word on a picture, and see whether the model reads it.

Rendering follows the Distill article's automated setup (Figure 15) or the user's placement:

  - The fixed setup writes the attack text in one style (DejaVu Sans Bold, white with a black
    outline) at the same positions on every picture. On pictures of CLIP's sizes (a shorter
    side of 160 px or more) these are the article's eight positions, at a font size of 1/16 of
    the side. On the synthetic world's 64 px pictures eight legible copies would cover half the
    picture, so there the setup is one copy at the centre, at 17 % of the side (11 px at 64 px),
    the smallest size at which the toy models still read a word.
  - A user placement is a centre (x, y as fractions of the width and height), a font size (a
    fraction of the shorter side), a colour, an outline and a rotation in degrees.

The pixel cover is the share of pixels the attack changed by any amount (an L0 norm), as in
Figure 16. Success follows the article: the attack succeeds on a picture when the target class
becomes the top class; pictures already classified as the target before the attack do not count.

`silenced` is the ablation hook: a context manager that sets units of a layer to zero during
every forward pass of the tower, so a probe can ask whether an attack still works without them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageColor, ImageDraw

from precompute.errors import Problem
from precompute.registry import LoadedModel

MAX_TEXT_CHARS = 64
ATTACK_FONT = "DejaVuSans-Bold.ttf"
# The article's eight arbitrarily chosen coordinates (centres, as fractions of width and height).
EIGHT_POSITIONS: tuple[tuple[float, float], ...] = (
    (0.22, 0.12), (0.72, 0.2), (0.3, 0.36), (0.78, 0.46), (0.2, 0.6), (0.62, 0.7), (0.3, 0.88), (0.8, 0.9),
)
LARGE_SIDE = 160  # pictures with a shorter side of at least this take the eight-position setup
LARGE_SIZE = 1 / 16
SMALL_SIZE = 0.17


@dataclass(frozen=True)
class Placement:
    """Where and how one copy of the text is written."""

    x: float = 0.5  # centre, fraction of the width
    y: float = 0.5  # centre, fraction of the height
    size: float = SMALL_SIZE  # font size, fraction of the shorter side
    color: str = "#ffffff"
    outline: str | None = "#000000"
    rotation: float = 0.0  # degrees, counter-clockwise

    def validate(self) -> None:
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0):
            raise Problem(422, "position-outside-image",
                          f"the text's centre ({self.x}, {self.y}) is outside the image; x and y are fractions from 0 to 1")
        if not 0.02 <= self.size <= 1.0:
            raise Problem(422, "bad-size", "the font size is a fraction of the image's shorter side, from 0.02 to 1")
        if not -360.0 <= self.rotation <= 360.0:
            raise Problem(422, "bad-rotation", "the rotation is in degrees, from -360 to 360")
        for name, value in (("color", self.color), ("outline", self.outline)):
            if value is None:
                continue
            try:
                ImageColor.getrgb(value)
            except ValueError:
                raise Problem(422, "bad-color", f"{name} {value!r} is not a colour (try '#ff0000' or 'red')") from None


@dataclass(frozen=True)
class Attacked:
    image: Image.Image
    pixel_cover: float


def check_text(text: str) -> str:
    text = (text or "").strip()
    if not text:
        raise Problem(422, "empty-text", "the attack text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise Problem(422, "text-too-long", f"the attack text has {len(text)} characters; at most {MAX_TEXT_CHARS}")
    return text


def fixed_placements(width: int, height: int) -> list[Placement]:
    """The automated setup's placements for a picture of this size (see the module's docstring)."""
    if min(width, height) >= LARGE_SIDE:
        return [Placement(x, y, LARGE_SIZE) for x, y in EIGHT_POSITIONS]
    return [Placement(0.5, 0.5, SMALL_SIZE)]


def _text_patch(text: str, placement: Placement, side: int) -> Image.Image:
    from precompute.world.fonts import font_path, get_font

    size = max(4, round(placement.size * side))
    font = get_font(font_path(ATTACK_FONT), size)
    stroke = max(1, round(size / 11)) if placement.outline else 0
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    pad = 2 + stroke
    patch = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    ImageDraw.Draw(patch).text(
        (pad - left, pad - top), text, font=font, fill=ImageColor.getrgb(placement.color),
        stroke_width=stroke, stroke_fill=ImageColor.getrgb(placement.outline) if placement.outline else None,
    )
    if placement.rotation:
        patch = patch.rotate(placement.rotation, resample=Image.BICUBIC, expand=True)
    return patch


def render_attack(image: Image.Image, text: str, placements: Sequence[Placement] | None = None) -> Attacked:
    """`image` with `text` written at each placement (the fixed setup when None)."""
    text = check_text(text)
    base = image.convert("RGB")
    width, height = base.size
    placements = list(placements) if placements else fixed_placements(width, height)
    canvas = base.convert("RGBA")
    for placement in placements:
        placement.validate()
        patch = _text_patch(text, placement, min(width, height))
        left = round(placement.x * width - patch.width / 2)
        top = round(placement.y * height - patch.height / 2)
        layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
        layer.paste(patch, (left, top))
        canvas = Image.alpha_composite(canvas, layer)
    attacked = canvas.convert("RGB")
    return Attacked(attacked, pixel_cover(base, attacked))


def pixel_cover(before: Image.Image, after: Image.Image) -> float:
    """Share of pixels that differ by any amount in any channel."""
    a, b = np.asarray(before.convert("RGB")), np.asarray(after.convert("RGB"))
    if a.shape != b.shape:
        raise ValueError("pixel cover compares pictures of one size")
    return float((a != b).any(axis=-1).mean())


# -- running the tower with a layer in view ---------------------------------------------------------
def _layer_units_last(layer, output: torch.Tensor) -> bool:
    return layer.kind != "conv"


@contextmanager
def silenced(loaded: LoadedModel, layer_name: str, units: Sequence[int]) -> Iterator[None]:
    """While open, units `units` of `layer_name` output zero in every forward pass of the tower."""
    layer = loaded.spec.layer(layer_name)
    index = torch.tensor(sorted({int(u) for u in units}), dtype=torch.long)
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= layer.units):
        raise Problem(422, "bad-unit", f"{layer_name} has units 0 to {layer.units - 1}")

    def hook(_module, _inputs, output):
        if not len(index):
            return output
        output = output.clone()
        if layer.kind == "conv":
            output[:, index.to(output.device)] = 0
        else:
            output[..., index.to(output.device)] = 0
        return output

    handle = loaded.model.visual.get_submodule(layer.module).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.inference_mode()
def encode_with_layer(loaded: LoadedModel, pixels: torch.Tensor, layer_name: str,
                      silence: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-length image embeddings and each unit's activation of `layer_name` (the spatial
    maximum, as Microscope ranks units), in one forward pass; `silence` units are zeroed."""
    from precompute.capture import _to_capture_layout, unit_maxima

    layer = loaded.spec.layer(layer_name)
    transformer = getattr(loaded.model.visual, "transformer", None)
    batch_first = getattr(transformer, "batch_first", True)
    kept: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        kept["a"] = _to_capture_layout(layer, output, batch_first)

    loaded.model.eval()
    with silenced(loaded, layer_name, silence):
        # Registered after the silencing hook, so it sees the silenced activation.
        handle = loaded.model.visual.get_submodule(layer.module).register_forward_hook(keep)
        try:
            features = loaded.model.encode_image(pixels.to(loaded.device))
        finally:
            handle.remove()
    values, _ = unit_maxima(kept["a"], layer)
    return F.normalize(features.float(), dim=-1), values.float()


# -- the article's measure --------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    target: int
    success: float | None  # None when every picture was already of the target class
    counted: int  # pictures not already classified as the target


def success_rate(clean_top: torch.Tensor, attacked_top: torch.Tensor, target: int) -> Outcome:
    keep = clean_top != target
    counted = int(keep.sum())
    if not counted:
        return Outcome(target, None, 0)
    return Outcome(target, float((attacked_top[keep] == target).float().mean()), counted)


def best_target(clean_top: torch.Tensor, attacked_top: torch.Tensor, classes: int) -> Outcome:
    """For a text of unknown target (the search): the class the attack most often makes top,
    by the article's measure."""
    outcomes = [success_rate(clean_top, attacked_top, c) for c in range(classes)]
    scored = [o for o in outcomes if o.success is not None]
    return max(scored, key=lambda o: (o.success, -o.target)) if scored else outcomes[0]


def changed_units(before: torch.Tensor, after: torch.Tensor, k: int) -> list[int]:
    """The `k` units whose activation the attack raised most (what carried the word)."""
    delta = (after - before).flatten()
    return [int(i) for i in torch.topk(delta, min(k, delta.numel())).indices]


# -- the live probe's computation -----------------------------------------------------------------
@dataclass(frozen=True)
class ProbeItem:
    """One probe request: a picture, the same picture attacked, and which units to silence
    ("listed": the units the attack raised most; a tuple of indices; empty: no silenced run)."""

    clean: Image.Image
    attacked: Image.Image
    silence: str | tuple[int, ...] = ()


def attack_readout(loaded: LoadedModel, layer_name: str, items: Sequence[ProbeItem], labels, *, top_k: int = 5,
                   top_units: int = 8, cache=None) -> list[dict]:
    """Before and after for a batch of probe requests in one forward pass (two more for the
    requests that silence units): each request's top classes on the clean and the attacked
    picture, the units whose activation the attack raised most with both activations, and,
    where asked, the top classes again with units silenced."""
    from precompute.zeroshot import class_features, probabilities, top_classes

    text = class_features(loaded, labels, cache)
    pixels = torch.stack([loaded.preprocess(image) for item in items for image in (item.clean, item.attacked)])
    features, values = encode_with_layer(loaded, pixels, layer_name)
    probs = probabilities(loaded, features, text).cpu()
    values = values.cpu()
    results: list[dict] = []
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, item in enumerate(items):
        before, after = values[2 * i], values[2 * i + 1]
        listed = changed_units(before, after, top_units)
        results.append({
            "before": top_classes(labels, probs[2 * i], top_k),
            "after": top_classes(labels, probs[2 * i + 1], top_k),
            "before_index": int(probs[2 * i].argmax()),
            "after_index": int(probs[2 * i + 1].argmax()),
            "units": [{"unit": u, "before": round(float(before[u]), 5), "after": round(float(after[u]), 5),
                       "change": round(float(after[u] - before[u]), 5)} for u in listed],
            "silenced": None,
            "pixels": (pixels[2 * i], pixels[2 * i + 1]),
        })
        chosen = tuple(listed) if item.silence == "listed" else tuple(sorted({int(u) for u in item.silence or ()}))
        if chosen:
            groups.setdefault(chosen, []).append(i)
    for chosen, members in groups.items():
        batch = torch.stack([pixels[2 * i + j] for i in members for j in (0, 1)])
        quiet, _ = encode_with_layer(loaded, batch, layer_name, silence=chosen)
        quiet_probs = probabilities(loaded, quiet, text).cpu()
        for n, i in enumerate(members):
            results[i]["silenced"] = {
                "units": list(chosen),
                "before": top_classes(labels, quiet_probs[2 * n], top_k),
                "after": top_classes(labels, quiet_probs[2 * n + 1], top_k),
                "after_index": int(quiet_probs[2 * n + 1].argmax()),
            }
    return results


# -- the automated evaluation (Figure 16) -----------------------------------------------------------
SEARCH_MAX_CHARS = 12  # the article searched "short class names"


@dataclass(frozen=True)
class AttackSpec:
    """An attack to evaluate: a text and its target class, or no target (a search candidate,
    whose target is the class it most often makes top)."""

    text: str
    target: str | None = None

    @property
    def kind(self) -> str:
        return "attack" if self.target is not None else "search"


def read_attacks(text: str) -> list[AttackSpec]:
    """An attacks file: one `target<TAB>text` (or `target,text`) a line; `#` starts a comment."""
    specs = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        target, sep, attack = line.partition("\t") if "\t" in line else line.partition(",")
        if not sep or not target.strip() or not attack.strip():
            raise Problem(422, "bad-attacks-file", f"line {number}: expected 'target<TAB>text' or 'target,text', got {line!r}")
        specs.append(AttackSpec(check_text(attack), target.strip()))
    if not specs:
        raise Problem(422, "bad-attacks-file", "the attacks file lists no attacks")
    return specs


def search_texts(class_names: Sequence[str], pool: Sequence[str] = (), max_chars: int = SEARCH_MAX_CHARS) -> list[str]:
    """The search's candidates: the short class names, then the pool's words, each once."""
    seen: dict[str, None] = {}
    for text in [*class_names, *pool]:
        text = text.strip()
        if text and len(text) <= max_chars and text.lower() not in {t.lower() for t in seen}:
            seen[text] = None
    return list(seen)


def evaluate_attack(loaded: LoadedModel, images: Sequence[Image.Image], clean_top: torch.Tensor, labels, spec: AttackSpec,
                    batch_size: int = 256, cache=None) -> dict:
    """One row of Figure 16: the attack's success rate over `images` (pictures already of the
    target excluded) and its mean pixel cover."""
    from precompute.zeroshot import classify

    attacked = [render_attack(image, spec.text) for image in images]
    top = classify(loaded, [a.image for a in attacked], labels, batch_size, cache).argmax(dim=1)
    if spec.target is not None:
        outcome = success_rate(clean_top, top, labels.index(spec.target))
    else:
        outcome = best_target(clean_top, top, len(labels.names))
    return {
        "kind": spec.kind,
        "text": spec.text,
        "target": labels.names[outcome.target],
        "success": outcome.success,
        "pixel_cover": float(np.mean([a.pixel_cover for a in attacked])) if attacked else 0.0,
        "images": outcome.counted,
    }


def write_held_out_objects(folder, count: int, seed: int = 1) -> None:
    """`count` PNG pictures of single objects of the synthetic world (one to two of a shape and
    colour, shapes in turn) from another seed than the training world's, for evaluations."""
    from pathlib import Path

    from precompute.world import COLORS, SHAPES, object_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), 22])
    for i in range(count):
        image = object_image(SHAPES[i % len(SHAPES)], list(COLORS)[int(rng.integers(len(COLORS)))], int(rng.integers(1, 3)), rng).image
        image.save(folder / f"{i:04d}.png")
