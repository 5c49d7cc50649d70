"""Text pools: their texts from each source, and their embeddings (with ImageNet's templates)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from precompute.errors import MicroscopeError, Problem
from precompute.registry import load_embedded
from precompute.text_pools import IMAGENET_SOURCE, encode_pool, pool_texts, templates_for


def test_each_kind_of_pool_has_its_texts_and_source(tmp_path):
    words = pool_texts("words", words=50)
    assert len(words.texts) == 50 and words.texts[0] == "the" and words.source == "wordfreq:en:50"
    assert all(w.isalpha() for w in words.texts)
    imagenet = pool_texts("imagenet")
    assert len(imagenet.texts) == 998 and imagenet.source  # two names are used twice (crane, maillot) == IMAGENET_SOURCE and "goldfish" in imagenet.texts
    world = pool_texts("world")
    assert {"red", "circle", "three"} <= set(world.texts) and world.source == "synthetic-world:vocabulary"
    file = tmp_path / "mine.txt"
    file.write_text("# my pool\na red circle\n\nthree stars\na red circle\n")
    mine = pool_texts("file", path=file)
    assert mine.texts == ("a red circle", "three stars") and mine.source == str(file.resolve())


@pytest.mark.parametrize("kind, options, message", [
    ("words", {"words": 0}, "--words must be between 1"),
    ("file", {"path": "/nonexistent/pool.txt"}, "does not exist"),
    ("colours", {}, "unknown pool kind"),
])
def test_bad_pools_are_refused(kind, options, message):
    with pytest.raises(MicroscopeError, match=message):
        pool_texts(kind, **options)


def test_embeddings_are_unit_length_and_imagenet_classes_average_their_templates():
    loaded = load_embedded("toy-vit")
    model, tokenizer = loaded.model, loaded.tokenizer
    texts = ["red", "blue circle", "three"]
    plain = encode_pool(model, tokenizer, texts, "synthetic-world:vocabulary", batch_size=2)
    with torch.inference_mode():
        direct = F.normalize(model.encode_text(tokenizer(texts)).float(), dim=-1)
    assert torch.allclose(plain, direct, atol=1e-5)
    templates = templates_for(IMAGENET_SOURCE)
    assert len(templates) == 80 and templates_for("wordfreq:en:50") is None
    classes = encode_pool(model, tokenizer, texts[:2], IMAGENET_SOURCE)
    with torch.inference_mode():
        for row, name in zip(classes, texts[:2]):
            prompts = F.normalize(model.encode_text(tokenizer([t(name) for t in templates])).float(), dim=-1)
            assert torch.allclose(row, F.normalize(prompts.mean(0), dim=0), atol=1e-5)
    assert torch.allclose(classes.norm(dim=1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(classes, plain[:2], atol=1e-3)  # the templates change the embedding


def test_a_label_set_reads_its_class_embeddings_from_a_pool_without_the_text_tower():
    """ImageNet's 1,000 classes from the pool's 998 rows (two names are classes twice), and a
    label set carrying stored embeddings classifies as the live one does, with no text-tower call."""
    import numpy as np

    from precompute.zeroshot import class_features, classify, from_pool, label_set, pool_source, prompt_count
    from precompute.world import object_image

    imagenet = label_set("imagenet")
    texts = pool_texts("imagenet").texts
    vectors = np.random.default_rng(0).standard_normal((len(texts), 8)).astype(np.float32)
    stored = from_pool(imagenet, texts, vectors)
    assert stored.features.shape == (1000, 8) and stored == imagenet  # the same label set, features aside
    missile = [i for i, name in enumerate(imagenet.names) if name == "missile"]
    assert len(missile) == 2 and torch.equal(stored.features[missile[0]], stored.features[missile[1]])
    goldfish = imagenet.names.index("goldfish")
    assert torch.allclose(stored.features[goldfish], F.normalize(torch.from_numpy(vectors[texts.index("goldfish")]), dim=0))
    assert from_pool(imagenet, texts[1:], vectors[1:]) is None  # a pool without every class
    assert pool_source(imagenet, toy=False) == IMAGENET_SOURCE and pool_source(imagenet, toy=True) is None
    assert prompt_count(imagenet, toy=False) == 80_000 and prompt_count(label_set(labels=["a", "b"]), toy=True) == 6

    loaded = load_embedded("toy-rn")
    shapes = label_set("world-shapes")
    live = class_features(loaded, shapes).clone()
    calls = []
    encode = loaded.model.encode_text
    loaded.model.encode_text = lambda tokens, *a, **k: calls.append(len(tokens)) or encode(tokens, *a, **k)
    pictures = [object_image("circle", "red", 1, np.random.default_rng([1, i])).image for i in range(3)]
    from_store = classify(loaded, pictures, shapes.with_features(live))
    assert calls == []
    assert torch.allclose(from_store, classify(loaded, pictures, shapes), atol=1e-6)
    with pytest.raises(Problem) as refused:  # embeddings of another model's joint space
        class_features(loaded, shapes.with_features(torch.ones(6, 3)))
    assert refused.value.status == 409 and refused.value.reason == "stale-text-embeddings"
