"""The toy models' report card, on held-out images of a different world seed.

Three figures, each a phenomenon of the seed papers reproduced in our world:
  - zero-shot accuracy on colour x shape classification (a prompt ensemble; the single
    prompt "a photo of a red circle" is reported beside it),
  - typographic-attack success (a written shape or colour name overrides what is drawn),
  - multimodality: per colour, a unit of the last layer that fires both for objects of that
    colour and for the colour's name rendered as text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from precompute.capture import capture, unit_maxima
from precompute.registry import LoadedModel


@dataclass
class EvalConfig:
    seed: int = 1  # the training world is seed 0: this one is held out
    images_per_class: int = 20
    attack_images: int = 480
    multimodal_images: int = 2400
    top_images: int = 50
    top_words: int = 5
    purity: float = 0.8
    batch_size: int = 256


# Zero-shot classes are named by an ensemble of prompts, as CLIP names ImageNet's classes
# by 80 templates. Pictures of the world hold one to four objects and are captioned in the
# singular or in the plural ("three red stars"); a word-level tokenizer shares nothing between
# "star" and "stars", so a single singular prompt misses pictures of several objects.
SINGULAR_TEMPLATES = ("a photo of a {color} {shape}", "a {color} {shape}", "a picture of a {color} {shape}")
PLURAL_TEMPLATES = (
    "a photo of two {color} {shapes}", "a photo of three {color} {shapes}", "a photo of four {color} {shapes}",
    "some {color} {shapes}",
)


def class_prompts() -> tuple[list[tuple[str, str]], list[str]]:
    """The colour x shape classes and their single plain prompt ("a photo of a red circle")."""
    from precompute.world import COLORS, SHAPES

    classes = [(color, shape) for color in COLORS for shape in SHAPES]
    return classes, [SINGULAR_TEMPLATES[0].format(color=color, shape=shape) for color, shape in classes]


@torch.inference_mode()
def encode_texts(loaded: LoadedModel, texts: list[str]) -> torch.Tensor:
    tokens = loaded.tokenizer(texts).to(loaded.device)
    return F.normalize(loaded.model.encode_text(tokens), dim=-1)


def class_text_features(loaded: LoadedModel) -> torch.Tensor:
    """One unit vector per class: the mean of its singular prompts and the mean of its plural
    prompts, weighted equally, so neither grammatical number outvotes the other."""
    from precompute.world import SHAPE_PLURALS

    classes, _ = class_prompts()
    templates = SINGULAR_TEMPLATES + PLURAL_TEMPLATES
    texts = [t.format(color=color, shape=shape, shapes=SHAPE_PLURALS[shape]) for color, shape in classes for t in templates]
    features = encode_texts(loaded, texts).view(len(classes), len(templates), -1)
    singular = F.normalize(features[:, :len(SINGULAR_TEMPLATES)].mean(dim=1), dim=-1)
    plural = F.normalize(features[:, len(SINGULAR_TEMPLATES):].mean(dim=1), dim=-1)
    return F.normalize(singular + plural, dim=-1)


def _pixel_batches(loaded: LoadedModel, images: list, batch_size: int):
    for start in range(0, len(images), batch_size):
        yield torch.stack([loaded.preprocess(image) for image in images[start:start + batch_size]])


@torch.inference_mode()
def encode_images(loaded: LoadedModel, images: list, batch_size: int = 256) -> torch.Tensor:
    features = [loaded.model.encode_image(batch.to(loaded.device)) for batch in _pixel_batches(loaded, images, batch_size)]
    return F.normalize(torch.cat(features), dim=-1)


def final_layer_maxima(loaded: LoadedModel, images: list, batch_size: int = 256) -> torch.Tensor:
    """Each last-layer unit's spatial maximum per image, read before the final ReLU as the
    Distill article ranks them: after it, every image a unit ignores ties at zero and ranks
    among those images (the rastered words, mostly) would be arbitrary."""
    layer = loaded.spec.final_layer
    values = []
    for batch in _pixel_batches(loaded, images, batch_size):
        activation = capture(loaded, batch, layer.name, pre_activation=True)[layer.name]
        values.append(unit_maxima(activation, layer)[0].float().cpu())
    return torch.cat(values)


def zero_shot_accuracy(loaded: LoadedModel, config: EvalConfig, *class_features: torch.Tensor) -> list[float]:
    """Accuracy of each set of class text features on the same held-out object pictures."""
    from precompute.world import object_image

    classes, _ = class_prompts()
    rng = np.random.default_rng([config.seed, 1])
    images, labels = [], []
    for label, (color, shape) in enumerate(classes):
        for _ in range(config.images_per_class):
            images.append(object_image(shape, color, int(rng.integers(1, 5)), rng).image)
            labels.append(label)
    image_features = encode_images(loaded, images, config.batch_size)
    labels = torch.tensor(labels)
    return [float(((image_features @ f.t()).argmax(dim=1).cpu() == labels).float().mean()) for f in class_features]


def typographic_success(loaded: LoadedModel, config: EvalConfig, text_features: torch.Tensor) -> dict[str, float]:
    """Fraction of attacked images classified as what is written rather than what is drawn."""
    from precompute.world import COLORS, SHAPES, typographic_attack_image

    classes, _ = class_prompts()
    colors, shapes = list(COLORS), list(SHAPES)
    rng = np.random.default_rng([config.seed, 2])
    results = {}
    for attribute in ("shape", "color"):
        images, written = [], []
        for _ in range(config.attack_images):
            color = colors[int(rng.integers(len(colors)))]
            shape = shapes[int(rng.integers(len(shapes)))]
            pool = shapes if attribute == "shape" else colors
            drawn = shape if attribute == "shape" else color
            word = [w for w in pool if w != drawn][int(rng.integers(len(pool) - 1))]
            images.append(typographic_attack_image(shape, color, word, rng).image)
            written.append(word)
        predictions = (encode_images(loaded, images, config.batch_size) @ text_features.t()).argmax(dim=1)
        predicted = [classes[int(p)][0 if attribute == "color" else 1] for p in predictions]
        results[attribute] = float(np.mean([p == w for p, w in zip(predicted, written)]))
    return results


def multimodal_units(loaded: LoadedModel, config: EvalConfig) -> dict[str, dict]:
    """For each colour, the last-layer unit that best fires for both its objects and its name."""
    from precompute.world import COLORS, SHAPES, WORDS, object_image, render_text

    colors, shapes = list(COLORS), list(SHAPES)
    rng = np.random.default_rng([config.seed, 3])
    images, image_colors = [], []
    for _ in range(config.multimodal_images):
        color = colors[int(rng.integers(len(colors)))]
        shape = shapes[int(rng.integers(len(shapes)))]
        images.append(object_image(shape, color, int(rng.integers(1, 5)), rng).image)
        image_colors.append(color)
    image_values = final_layer_maxima(loaded, images, config.batch_size)  # (images, units)
    words = list(dict.fromkeys(WORDS))
    word_values = final_layer_maxima(loaded, [render_text(word) for word in words], config.batch_size)

    top_images = image_values.topk(config.top_images, dim=0).indices.t()  # (units, top)
    color_index = torch.tensor([colors.index(c) for c in image_colors])
    purity = torch.stack([(color_index[top_images] == k).float().mean(dim=1) for k in range(len(colors))])  # (colors, units)
    word_order = word_values.argsort(dim=0, descending=True)  # (words, units)
    word_rank = torch.empty_like(word_order)
    word_rank.scatter_(0, word_order, torch.arange(len(words)).unsqueeze(1).expand_as(word_order))

    report = {}
    for k, color in enumerate(colors):
        rank = word_rank[words.index(color)]  # (units,) rank of the colour's name, 0 = top
        qualifies = (purity[k] >= config.purity) & (rank < config.top_words)
        candidates = qualifies.nonzero().flatten()
        if len(candidates):
            unit = int(candidates[purity[k][candidates].argmax()])
        else:  # report the closest miss: the purest unit among those reading the word best
            score = purity[k] - rank.float() / len(words)
            unit = int(score.argmax())
        top_words = [words[int(i)] for i in word_order[: config.top_words, unit]]
        report[color] = {
            "unit": unit,
            "image_purity": round(float(purity[k][unit]), 3),
            "word_rank": int(rank[unit]) + 1,
            "top_words": top_words,
            "meets_bar": bool(qualifies[unit]),
        }
    return report


def evaluate(loaded: LoadedModel, config: EvalConfig | None = None) -> dict:
    config = config or EvalConfig()
    torch.manual_seed(config.seed)
    _, prompts = class_prompts()
    text_features = class_text_features(loaded)
    attack = typographic_success(loaded, config, text_features)
    colors = multimodal_units(loaded, config)
    ensemble, single = zero_shot_accuracy(loaded, config, text_features, encode_texts(loaded, prompts))
    return {
        "zero_shot_accuracy": round(ensemble, 4),
        "zero_shot_accuracy_single_prompt": round(single, 4),
        "typographic_success_shape": round(attack["shape"], 4),
        "typographic_success_color": round(attack["color"], 4),
        "multimodal_colors": sum(entry["meets_bar"] for entry in colors.values()),
        "multimodal_units": colors,
        "layer": loaded.spec.final_layer.name,
        # Ties the figures to the weights they describe: another checkpoint fails the comparison.
        "checkpoint_sha256": loaded.checkpoint_sha256,
        "eval_config": asdict(config),
    }
