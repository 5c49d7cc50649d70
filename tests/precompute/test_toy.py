"""The embedded toy models: tokenizer, training mechanics, and the shipped checkpoints' figures.

The figures are checked on the shipped checkpoints through the same registry and capture
code as any model, so a regression in the models or in the capture code fails here.
"""

import copy
import hashlib
import json
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

from precompute.registry import load_embedded, load_model
from precompute.toy import TOY_ARCHITECTURES, embedded_checkpoint
from precompute.toy.tokenizer import WordTokenizer
from precompute.toy.train import TrainConfig, generate_training_set, make_tokenizer, recipe, train

SHIPPED = [arch for arch in TOY_ARCHITECTURES.values()]


class Halt(Exception):
    """An interrupted training run."""


def halt_at(stop: int):
    """An on_step callback that interrupts training once step `stop` is done."""

    def on_step(step, _loss):
        if step == stop:
            raise Halt

    return on_step


def test_end_of_text_is_the_highest_id_whatever_the_vocabulary():
    tokenizer = make_tokenizer("toy-rn")
    tokens = tokenizer(["a photo of a red circle", "the word 'apple' written in blue"])
    assert tokens.shape == (2, 24)
    for row in tokens:
        assert int(row.argmax()) == int((row != 0).nonzero().max())  # pooled at end-of-text
        assert int(row.max()) == tokenizer.eot == 1023
    small = WordTokenizer(["b", "a"], vocab_size=8, context_length=5)
    assert small("a b a b a b").tolist() == [[1, 4, 3, 4, 7]]
    assert small.unknown_words("a zebra") == ["zebra"]


def test_a_recipe_trains_on_its_own_world():
    """toy-rn's recipe trains on a world that shows colour names more often and captions
    them by meaning; toy-vit's keeps that and changes the mix of pictures. The overrides reach
    the generated pictures and no recipe shares its copy."""
    from precompute.world import WorldConfig, generate_batch

    rn, vit = recipe("toy-rn"), recipe("toy-vit")
    assert rn.world == {"p_meaning_word": 0.85, "p_meaning_caption": 0.85}
    assert {key: vit.world[key] for key in rn.world} == rn.world and vit.world != rn.world
    assert vit.teacher == "toy-rn" and rn.teacher is None
    vit_pixels, _ = generate_training_set(7, 20, processes=1, world=vit.world)
    assert np.array_equal(vit_pixels, generate_batch(7, 0, 20, WorldConfig(**vit.world))[0])
    rn.world["p_meaning_word"] = 0.1
    assert recipe("toy-rn").world["p_meaning_word"] == 0.85  # each call gets its own copy

    pixels, captions = generate_training_set(7, 40, processes=1, world=recipe("toy-rn").world)
    expected_pixels, expected_captions, _ = generate_batch(7, 0, 40, WorldConfig(p_meaning_word=0.85, p_meaning_caption=0.85))
    assert captions == expected_captions and np.array_equal(pixels, expected_pixels)
    _, default_captions = generate_training_set(7, 40, processes=1)
    assert default_captions != captions


def test_training_is_resumable_and_reproducible(tmp_path):
    config = TrainConfig(arch="toy-rn", seed=5, train_images=64, steps=4, batch_size=16, warmup_steps=2, state_every=2)
    whole = train(config, tmp_path / "whole.safetensors", tmp_path / "work-whole")
    assert whole["config"]["steps"] == 4
    # An interrupted run: stop after two steps (the state file is written there), then rerun.
    halted = TrainConfig(**{**config.__dict__})
    work = tmp_path / "work-split"

    with pytest.raises(Halt):
        train(halted, tmp_path / "split.safetensors", work, on_step=halt_at(2))
    train(halted, tmp_path / "split.safetensors", work)
    a = load_model("whole", "toy-rn", checkpoint=tmp_path / "whole.safetensors").model.state_dict()
    b = load_model("split", "toy-rn", checkpoint=tmp_path / "split.safetensors").model.state_dict()
    # Bit for bit: same seed, same threads, so a resumed run is the uninterrupted run.
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The checkpoint describes itself: the registry builds the word tokenizer from it.
    loaded = load_model("whole", "toy-rn", checkpoint=tmp_path / "whole.safetensors")
    assert loaded.tokenizer("a red circle").shape == (1, 24)


def test_a_student_learns_from_its_teacher(tmp_path):
    """A toy-vit taught by toy-rn (its recipe: embeddings and hints) starts from the teacher's text
    tower and temperature, keeps the text tower locked while its image tower moves toward the
    teacher, and a rerun, or a run interrupted and resumed, is the same run bit for bit."""
    from precompute.checkpoints import read_metadata, sha256_of

    teacher = load_embedded("toy-rn").model.state_dict()
    config = TrainConfig(arch="toy-vit", seed=2, train_images=48, steps=4, batch_size=16, warmup_steps=1, teacher="toy-rn",
                         hints=recipe("toy-vit").hints, world=recipe("toy-rn").world, state_every=2)
    taught = []
    summary = train(config, tmp_path / "student.safetensors", tmp_path / "work", on_teacher=taught.append)
    assert sum(taught) == 48
    assert summary["teacher_sha256"] == sha256_of(embedded_checkpoint("toy-rn"))
    assert json.loads(read_metadata(tmp_path / "student.safetensors")["training"])["config"]["teacher"] == "toy-rn"
    student = load_model("student", "toy-vit", checkpoint=tmp_path / "student.safetensors").model.state_dict()
    text_keys = [key for key in teacher if not key.startswith("visual.") and key != "logit_scale"]
    assert text_keys and all(torch.equal(student[key], teacher[key]) for key in text_keys)
    torch.manual_seed(config.seed)
    initial = open_clip.create_model("toy-vit", pretrained=None).state_dict()
    assert not torch.equal(initial["visual.proj"], student["visual.proj"])
    assert not any(key.startswith("heads") for key in student)  # the hint heads stay out of the checkpoint

    train(config, tmp_path / "again.safetensors", tmp_path / "work-again")
    again = load_model("again", "toy-vit", checkpoint=tmp_path / "again.safetensors").model.state_dict()
    assert all(torch.equal(student[key], again[key]) for key in student)

    with pytest.raises(Halt):
        train(config, tmp_path / "resumed.safetensors", tmp_path / "work-resumed", on_step=halt_at(3))
    train(config, tmp_path / "resumed.safetensors", tmp_path / "work-resumed")  # from the state of step 2
    resumed = load_model("resumed", "toy-vit", checkpoint=tmp_path / "resumed.safetensors").model.state_dict()
    assert all(torch.equal(student[key], resumed[key]) for key in student)


def test_hints_pull_patch_tokens_toward_the_teacher_maps():
    """Each hint head projects its block's patch tokens, pooled to the teacher map's grid; the loss
    is the mean cosine distance to the teacher's vectors: 0 when they agree, 2 when opposed."""
    from precompute.toy.hints import HintHeads

    torch.manual_seed(0)
    model = open_clip.create_model("toy-vit", pretrained=None).eval()
    hints = HintHeads(model.visual, [(1, "layer2"), (3, "layer3")], channels=[192, 384], sides=[8, 4])
    model.requires_grad_(False)
    hints.requires_grad_(False)
    images = torch.randn(3, 3, 64, 64)
    block_outputs = {}
    for block in (1, 3):
        model.visual.transformer.resblocks[block].register_forward_hook(
            lambda _m, _i, output, block=block: block_outputs.__setitem__(block, output.detach()))
    model.encode_image(images)
    patches = {block: tokens[:, 1:] for block, tokens in block_outputs.items()}  # (3, 64, 128), row-major 8x8
    pooled4 = patches[3].reshape(3, 4, 2, 4, 2, 128).mean(dim=(2, 4)).reshape(3, 16, 128)  # 2x2 cells of the grid
    with torch.no_grad():
        agree = [hints.heads[0](patches[1]), hints.heads[1](pooled4)]
    assert float(hints.loss(agree)) == pytest.approx(0.0, abs=1e-5)
    model.encode_image(images)
    assert float(hints.loss([-t for t in agree])) == pytest.approx(2.0, abs=1e-5)
    model.encode_image(images)
    mixed = [agree[0], -agree[1]]
    assert float(hints.loss(mixed)) == pytest.approx(1.0, abs=1e-5)  # averaged over the hints
    hints.detach_hooks()
    model.encode_image(images)
    with pytest.raises(KeyError):
        hints.loss(agree)  # detached: the student's forward pass no longer feeds the heads
    with pytest.raises(ValueError, match="does not tile"):
        HintHeads(model.visual, [(1, "layer3")], channels=[384], sides=[3])


def test_a_finer_teacher_map_is_predicted_per_sub_patch():
    """A teacher map finer than the patch grid (toy-rn's layer1: 16 x 16 against 8 x 8 patches):
    each patch token's head predicts its 2 x 2 sub-positions, laid out row-major on the finer grid."""
    from precompute.toy.hints import HintHeads

    torch.manual_seed(0)
    model = open_clip.create_model("toy-vit", pretrained=None).eval()
    hints = HintHeads(model.visual, [(1, "layer1")], channels=[96], sides=[16])
    model.requires_grad_(False)
    hints.requires_grad_(False)
    images = torch.randn(2, 3, 64, 64)
    block_outputs = {}
    model.visual.transformer.resblocks[1].register_forward_hook(
        lambda _m, _i, output: block_outputs.__setitem__(1, output.detach()))
    model.encode_image(images)
    with torch.no_grad():
        # (batch, row, column, sub-row, sub-column, channels)
        per_token = hints.heads[0](block_outputs[1][:, 1:]).view(2, 8, 8, 2, 2, 96)
    fine = torch.empty(2, 16, 16, 96)
    for row in range(16):
        for col in range(16):
            fine[:, row, col] = per_token[:, row // 2, col // 2, row % 2, col % 2]
    target = fine.reshape(2, 256, 96)
    assert float(hints.loss([target])) == pytest.approx(0.0, abs=1e-5)
    model.encode_image(images)
    transposed = fine.transpose(1, 2).reshape(2, 256, 96)  # the same vectors at the wrong positions
    assert float(hints.loss([transposed])) > 0.1
    with pytest.raises(ValueError, match="does not tile"):
        HintHeads(model.visual, [(1, "layer1")], channels=[96], sides=[12])


def test_hints_need_a_teacher(tmp_path):
    config = TrainConfig(arch="toy-vit", train_images=16, steps=1, batch_size=16, hints=[[2, "layer2"]])
    with pytest.raises(ValueError, match="hints come from a teacher"):
        train(config, tmp_path / "never.safetensors", tmp_path / "work")
    assert not (tmp_path / "never.safetensors").exists()


def test_the_distillation_term_pulls_toward_the_teacher():
    """With teacher features, the loss adds distill_weight times the mean cosine distance."""
    from precompute.toy.train import TrainConfig as Config
    from precompute.toy.train import contrastive_loss, make_optimizer, train_step

    torch.manual_seed(0)
    model = open_clip.create_model("toy-vit", pretrained=None).train()
    images, tokens = torch.randn(8, 3, 64, 64), torch.randint(1, 1000, (8, 24))
    ids = torch.arange(8)
    with torch.no_grad():
        image_features, text_features, scale = model(images, tokens)[:3]
        plain = float(contrastive_loss(image_features, text_features, scale, ids))
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)  # the features stay those computed above
    assert train_step(model, model, frozen, images, tokens, ids, image_features, 10.0) == pytest.approx(plain, rel=1e-4)
    # Opposite targets: a cosine distance of 2 for every image, times the weight.
    assert train_step(model, model, frozen, images, tokens, ids, -image_features, 10.0) == pytest.approx(plain + 20.0, rel=1e-4)
    # And a real optimizer step on the distillation term alone moves the features toward the targets.
    targets = F.normalize(torch.randn_like(image_features), dim=-1)
    before = float((image_features * targets).sum(dim=1).mean())
    optimizer = make_optimizer(model, Config(arch="toy-vit", learning_rate=1e-3))
    for _ in range(5):
        train_step(model, model, optimizer, images, tokens, ids, targets, 1000.0)
    with torch.no_grad():
        after = float((model(images, tokens)[0] * targets).sum(dim=1).mean())
    assert after > before + 0.2


def test_a_locked_text_tower_is_read_from_its_caption_embeddings():
    """With the text tower locked, steps that look captions up in embeddings computed once
    train exactly as steps that run the text tower every time."""
    from precompute.toy.train import caption_features, locked_text_forward, make_optimizer, train_step

    torch.manual_seed(0)
    full = open_clip.create_model("toy-vit", pretrained=None).train()
    full.lock_text_tower()
    cached = copy.deepcopy(full)
    captions = ["a red circle", "two blue stars", "the word 'apple' written in green", "a red circle"] * 3
    tokens = make_tokenizer("toy-vit")(captions)
    unique_tokens, ids = torch.unique(tokens, dim=0, return_inverse=True)
    images = torch.randn(len(captions), 3, 64, 64)
    config = TrainConfig(arch="toy-vit", learning_rate=1e-3)
    full_optimizer, cached_optimizer = make_optimizer(full, config), make_optimizer(cached, config)
    lookup = locked_text_forward(cached, caption_features(cached, unique_tokens, torch.device("cpu"), batch_size=2))
    assert not any(p.requires_grad for n, p in full.named_parameters() if n.startswith(("transformer.", "token_")))
    initial_projection = full.visual.proj.detach().clone()
    for _ in range(3):
        expected = train_step(full, full, full_optimizer, images, tokens, ids)
        assert train_step(cached, lookup, cached_optimizer, images, ids, ids) == pytest.approx(expected, rel=1e-5)
    moved = cached.state_dict()
    # Adam turns a float-rounding gradient of either sign into a step of about the learning rate,
    # so weights agree at that scale while the losses agree closely.
    for key, value in full.state_dict().items():
        torch.testing.assert_close(moved[key], value, rtol=1e-3, atol=3 * config.learning_rate, msg=key)
    assert not torch.equal(moved["visual.proj"], initial_projection)  # the image tower did train


@pytest.mark.slow
def test_compiled_training_matches_eager_training(tmp_path):
    """The recipes train through torch.compile; it must compute the same steps as eager mode
    (up to float summation order: Adam turns a tiny gradient of either sign into a step of
    about the learning rate, so weights are compared at that scale, losses closely)."""
    config = TrainConfig(arch="toy-vit", seed=3, train_images=32, steps=3, batch_size=16, warmup_steps=1)
    losses: dict[str, list[float]] = {"eager": [], "compiled": []}
    eager = train(config, tmp_path / "eager.safetensors", tmp_path / "work-eager",
                  on_step=lambda _step, loss: losses["eager"].append(loss))
    compiled = train(TrainConfig(**{**config.__dict__, "compile": True}), tmp_path / "compiled.safetensors",
                     tmp_path / "work-compiled", on_step=lambda _step, loss: losses["compiled"].append(loss))
    assert compiled["config"]["compile"] and not eager["config"]["compile"]
    # The eager fallback on compile errors is the training run's alone, not the process's.
    assert torch._dynamo.config.suppress_errors is False
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-3)
    a = load_model("eager", "toy-vit", checkpoint=tmp_path / "eager.safetensors").model.state_dict()
    b = load_model("compiled", "toy-vit", checkpoint=tmp_path / "compiled.safetensors").model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=2.5 * config.learning_rate, msg=key)
    torch.manual_seed(config.seed)
    initial = open_clip.create_model("toy-vit", pretrained=None).state_dict()
    assert not torch.equal(initial["visual.proj"], b["visual.proj"])  # the compiled steps did train
    # And a compiled run is reproducible bit for bit, as the recipes promise.
    train(TrainConfig(**{**config.__dict__, "compile": True}), tmp_path / "again.safetensors", tmp_path / "work-again")
    again = load_model("again", "toy-vit", checkpoint=tmp_path / "again.safetensors").model.state_dict()
    assert all(torch.equal(b[key], again[key]) for key in b)


@pytest.mark.parametrize("arch", SHIPPED)
def test_shipped_checkpoints_are_small_and_load_through_the_registry(arch):
    path = embedded_checkpoint(arch)
    assert path.stat().st_size <= 25 * 1024 * 1024
    loaded = load_embedded(arch)
    assert loaded.source == "embedded" and loaded.spec.image_size == 64
    features = loaded.model.encode_text(loaded.tokenizer(["a photo of a red circle"]))
    assert features.shape == (1, 128)


@pytest.fixture(scope="module")
def eval_figures():
    result = subprocess.run([sys.executable, "-m", "cli.main", "toy", "eval", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


RECORDED = json.loads((embedded_checkpoint("toy-rn").parent / "figures.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("arch", SHIPPED)
def test_shipped_models_keep_their_recorded_figures(eval_figures, arch):
    """The figures recorded when the checkpoints were trained (figures.json) come back through
    today's registry, capture and eval code: a regression in any of them fails here."""
    figures, recorded = eval_figures[arch], RECORDED[arch]
    for key in ("zero_shot_accuracy", "typographic_success_shape", "typographic_success_color"):
        assert 0.0 <= figures[key] <= 1.0
        assert abs(figures[key] - recorded[key]) <= 0.02, key
    assert abs(figures["multimodal_colors"] - recorded["multimodal_colors"]) <= 1
    for color, unit in figures["multimodal_units"].items():
        if unit["meets_bar"]:
            assert unit["image_purity"] >= 0.8 and color in unit["top_words"]
    # The figures describe these weights and these units: another checkpoint, or the same one
    # with its units permuted, names other units and other words.
    assert figures["checkpoint_sha256"] == recorded["checkpoint_sha256"]
    for color, unit in recorded["multimodal_units"].items():
        if unit["meets_bar"]:
            found = figures["multimodal_units"][color]
            assert found["unit"] == unit["unit"], color
            assert len(set(found["top_words"]) & set(unit["top_words"])) >= 4, (color, found["top_words"])
            assert abs(found["word_rank"] - unit["word_rank"]) <= 1, color


@pytest.mark.parametrize("arch", SHIPPED)
def test_recorded_figures_name_the_shipped_checkpoint(arch):
    digest = hashlib.sha256(embedded_checkpoint(arch).read_bytes()).hexdigest()
    assert RECORDED[arch]["checkpoint_sha256"] == digest


@pytest.mark.slow
def test_toy_rn_has_a_multimodal_red_unit(eval_figures):
    """At least one colour unit of toy-rn fires for red objects and for the word 'red'."""
    red = eval_figures["toy-rn"]["multimodal_units"]["red"]
    assert red["meets_bar"] and red["image_purity"] >= 0.8 and "red" in red["top_words"]


def _bars_of_issue_3(figures: dict) -> dict[str, bool]:
    return {
        "zero-shot >= 0.90": figures["zero_shot_accuracy"] >= 0.90,
        "typographic attack >= 0.50": max(figures["typographic_success_shape"],
                                          figures["typographic_success_color"]) >= 0.50,
        "multimodal colours >= 6": figures["multimodal_colors"] >= 6,
    }


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "bar"), [(arch, bar) for arch in SHIPPED for bar in _bars_of_issue_3(RECORDED[arch])])
def test_shipped_models_against_the_bars_of_issue_3(eval_figures, arch, bar):
    """Both models meet every bar, typographic attacks included: a written shape name overrides
    the drawn shape in most attacked images, the seed paper's phenomenon in our world."""
    assert _bars_of_issue_3(eval_figures[arch])[bar], f"{arch}: {bar}"
