"""Reproducible CPU-friendly training of the toy CLIP models on the synthetic world.

The training set is generated once in memory from (seed, index), batches are drawn from a
permutation seeded by (seed, epoch), and a resumable state file is written every few
hundred steps, so an interrupted run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from precompute.checkpoints import META_CONFIG, META_VOCAB, write_checkpoint
from precompute.registry import load_embedded
from precompute.toy import register_toy_configs
from precompute.toy.hints import HintHeads, teacher_map_hooks
from precompute.toy.tokenizer import WordTokenizer


@dataclass
class TrainConfig:
    arch: str = "toy-rn"
    seed: int = 0
    train_images: int = 100_000
    steps: int = 2000
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    # CPU threads. The recipes pin 2: the number of threads changes how reductions split,
    # so a retrain reproduces a checkpoint bit for bit only with the same count. 0: torch's default.
    threads: int = 2
    state_every: int = 100
    # torch.compile (inductor) halves the ResNet's step time on CPU; it falls back to eager
    # where no C++ compiler is found.
    compile: bool = False
    device: str = "cpu"
    # The world this model trains on: WorldConfig fields that differ from its defaults.
    world: dict = field(default_factory=dict)
    # An embedded toy model to learn from (DeiT's idea: a convnet teacher lends a ViT its
    # inductive bias). The student takes the teacher's text tower, locked, and its temperature,
    # and is pulled toward the teacher's image embedding of every training image, a target far
    # denser than the batch-relative contrastive one.
    teacher: str | None = None
    distill_weight: float = 10.0
    # Hints from the teacher's intermediate maps: [student block, teacher stage] pairs (see hints.py),
    # each a cosine distance per position, averaged over the hints and weighted by hint_weight.
    hints: list = field(default_factory=list)
    hint_weight: float = 5.0


# The shipped checkpoints' recipes: each fits in 30 minutes on 2 CPU cores (data and
# compilation included).
RECIPES: dict[str, dict] = {
    # A world that shows colour names more often and captions them more often by what they
    # mean ("something red" under the word "red" written in blue): each such picture asks the
    # units that see a colour to read its name too. It took toy-rn from 4-5 to 6 of 8
    # multimodal colours on three eval seeds, and typographic success from 0.59 to 0.77.
    "toy-rn": {"steps": 2500, "batch_size": 128, "learning_rate": 2e-3, "warmup_steps": 200, "compile": True,
               "world": {"p_meaning_word": 0.85, "p_meaning_caption": 0.85}},
    # Eager: under deterministic algorithms the compiled transformer step is slower, not faster.
    # On its own, 30 CPU minutes left it barely reading (typographic success 0.14, 1 multimodal
    # colour). So it learns from toy-rn, which reads: it takes toy-rn's locked text tower (caption
    # embeddings are then computed once, not every step), is pulled toward toy-rn's embedding of
    # every training image, and gets hints: its patch tokens after blocks 2, 4 and 5 must map
    # linearly onto toy-rn's layer2, layer3 and layer4 maps, a target per region that teaches a
    # ViT locality far faster than image-level targets do (hints at blocks 2 and 4 alone took it
    # from 1 to 5 multimodal colours), and after block 1 onto layer1's finer map, each patch token
    # predicting its 2 x 2 sub-positions, so that it keeps the strokes inside a patch (+0.04..0.06
    # typographic success). Weighted 20 (10 before), the hints made it fall for typographic attacks
    # (0.53..0.57 on three eval seeds, 0.41..0.46 at 10) at a point more zero-shot accuracy, with 6
    # multimodal colours (7 at 10); more shape names on its labelled objects read about as much
    # but left 4. Its tower pools by averaging the patch tokens (configs/toy-vit.json),
    # so the last block's patch neurons, the ones Microscope ranks, are the ones that make the
    # embedding, as layer4 is for a ResNet (in an earlier recipe, attention pooling read more,
    # 0.44 typographic against 0.35, but left 2 multimodal colours). Batches of 64: twice the
    # updates of 128 for 6 % more time per picture. Its world has fewer pictures of words alone
    # and more labelled objects (42 / 18 / 40 % objects / words / mixed; 45 / 25 / 30 by
    # default), and captions 90 % of labelled objects by their word alone: with hints weighted
    # 10, 7 multimodal colours and typographic success 0.46 (5 and 0.29 on the default mix) at
    # 0.91 zero-shot; with 30 % objects it read more (0.47..0.53) but fell to 0.85 zero-shot.
    "toy-vit": {"steps": 2800, "batch_size": 64, "learning_rate": 1e-3, "warmup_steps": 200,
                "teacher": "toy-rn", "hints": [[1, "layer1"], [2, "layer2"], [4, "layer3"], [5, "layer4"]],
                "hint_weight": 20.0,
                "world": {"p_meaning_word": 0.85, "p_meaning_caption": 0.85, "p_object": 0.42, "p_word": 0.18,
                          "p_mixed": 0.40, "p_mixed_both": 0.1}},
}


def recipe(arch: str, seed: int = 0) -> TrainConfig:
    return TrainConfig(arch=arch, seed=seed, **copy.deepcopy(RECIPES[arch]))


def _generate_chunk(args: tuple[int, int, int, dict]):
    from precompute.world import WorldConfig, generate_batch

    seed, start, count, world = args
    pixels, captions, _metas = generate_batch(seed, start, count, WorldConfig(**world))
    return pixels, captions


def generate_training_set(seed: int, count: int, processes: int = 2, chunk: int = 2000,
                          progress: Callable[[int], None] | None = None,
                          world: dict | None = None) -> tuple[np.ndarray, list[str]]:
    """Images (N, H, W, 3) uint8 and captions for indices [0, count) of the world `seed`
    (WorldConfig fields in `world` override today's defaults)."""
    jobs = [(seed, start, min(chunk, count - start), world or {}) for start in range(0, count, chunk)]
    pixels, captions = [], []
    if processes > 1:
        context = multiprocessing.get_context("spawn")
        with context.Pool(processes) as pool:
            for chunk_pixels, chunk_captions in pool.imap(_generate_chunk, jobs):
                pixels.append(chunk_pixels)
                captions.extend(chunk_captions)
                if progress:
                    progress(len(chunk_captions))
    else:
        for job in jobs:
            chunk_pixels, chunk_captions = _generate_chunk(job)
            pixels.append(chunk_pixels)
            captions.extend(chunk_captions)
            if progress:
                progress(len(chunk_captions))
    return np.concatenate(pixels), captions


def make_tokenizer(arch: str) -> WordTokenizer:
    from precompute.world import caption_vocabulary

    register_toy_configs()
    text_cfg = open_clip.get_model_config(arch)["text_cfg"]
    return WordTokenizer(caption_vocabulary(), text_cfg["vocab_size"], text_cfg["context_length"])


def image_normalisation(model: torch.nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's per-channel mean and std, shaped (1, 3, 1, 1) for normalise_pixels."""
    cfg = model.visual.preprocess_cfg
    return (torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1),
            torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1))


def normalise_pixels(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) with the model's mean and std."""
    images = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    return (images - mean) / std


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                     caption_ids: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE, where identical captions in a batch count as positives.

    A small world repeats captions ("a red circle") within a batch; treating those pairs
    as negatives would push apart embeddings that should coincide.
    """
    logits = logit_scale * image_features @ text_features.t()
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def _learning_rate(config: TrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * config.learning_rate * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, config: TrainConfig, *scaffolding: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW as CLIP trains, without weight decay on gains, biases, embeddings and the temperature
    (and without the parameters a teacher's locked text tower froze). `scaffolding` (hint heads)
    trains alongside."""
    trainable = [(n, p) for module in (model, *scaffolding) for n, p in module.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in trainable if not (p.ndim >= 2 and "embedding" not in n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate, betas=(0.9, 0.98), eps=1e-6,
    )


def train_step(model: torch.nn.Module, forward: Callable, optimizer: torch.optim.Optimizer,
               images: torch.Tensor, text: torch.Tensor, caption_ids: torch.Tensor,
               teacher_features: torch.Tensor | None = None, distill_weight: float = 0.0,
               extra_loss: Callable[[], torch.Tensor] | None = None) -> float:
    """One optimisation step on a batch; `forward` is the model itself, its compiled form, or a
    `locked_text_forward`, and `text` what it reads (tokens, or caption ids for the latter).
    With `teacher_features` (unit vectors), the cosine distance of the image embeddings to them
    joins the loss, and so does `extra_loss()` (hints), called after the forward pass. Returns the loss."""
    image_features, text_features, logit_scale = forward(images, text)[:3]
    loss = contrastive_loss(image_features, text_features, logit_scale, caption_ids)
    if teacher_features is not None:
        loss = loss + distill_weight * (1 - (image_features * teacher_features).sum(dim=1)).mean()
    if extra_loss is not None:
        loss = loss + extra_loss()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return loss.item()


def _eager_fallback(enabled: bool):
    """While training, a machine without a C++ compiler (or an op inductor cannot lower) trains
    eagerly instead of failing. Scoped to the run: elsewhere in the process (a server, a
    benchmark) a compile error must still surface."""
    import torch._dynamo

    return torch._dynamo.config.patch(suppress_errors=True) if enabled else contextlib.nullcontext()


@dataclass
class TeacherTargets:
    features: torch.Tensor  # (N, embed_dim) unit image embeddings
    maps: list[torch.Tensor]  # per hint, (N, h*w, channels) half-precision stage outputs
    sha256: str


def learn_from_teacher(model: torch.nn.Module, teacher_id: str, tokenizer: WordTokenizer, pixels: torch.Tensor,
                       device: torch.device, progress: Callable[[int], None] | None,
                       hint_layers: list[str] | None = None, batch_size: int = 500) -> TeacherTargets:
    """Give `model` the embedded teacher's text tower (locked) and temperature; return the
    teacher's unit image embeddings of `pixels` and its maps at `hint_layers`, on the CPU, with
    the sha256 of the teacher's checkpoint."""
    teacher = load_embedded(teacher_id, device=device)
    if getattr(teacher.tokenizer, "vocabulary", None) != tokenizer.vocabulary:
        raise ValueError(f"teacher {teacher_id} reads another vocabulary than the student")
    text_state = {name: value for name, value in teacher.model.state_dict().items()
                  if not name.startswith("visual.")}
    missing = set(text_state) - set(model.state_dict())
    if missing:
        raise ValueError(f"teacher {teacher_id}'s text tower does not fit the student ({sorted(missing)[0]})")
    model.load_state_dict(text_state, strict=False)
    model.lock_text_tower()
    mean, std = image_normalisation(teacher.model, device)
    hint_layers = hint_layers or []
    # Filled in place: the maps of 100,000 pictures take about 9 GB (layer1's alone 4.9 GB), and
    # gathering per-batch pieces to concatenate them would hold every map twice at the end.
    features: torch.Tensor | None = None
    maps: dict[str, torch.Tensor] = {}
    captured: dict[str, torch.Tensor] = {}
    hooks = teacher_map_hooks(teacher.model.visual, hint_layers, captured)
    try:
        with torch.no_grad():
            for start in range(0, len(pixels), batch_size):
                batch = normalise_pixels(pixels[start:start + batch_size].to(device), mean, std)
                embedded = teacher.model.encode_image(batch, normalize=True).cpu()
                if features is None:
                    features = embedded.new_empty((len(pixels), *embedded.shape[1:]))
                features[start:start + len(batch)] = embedded
                for name in hint_layers:
                    stage = captured.pop(name).cpu()
                    if name not in maps:
                        maps[name] = stage.new_empty((len(pixels), *stage.shape[1:]))
                    maps[name][start:start + len(batch)] = stage
                if progress:
                    progress(len(batch))
    finally:
        for hook in hooks:
            hook.remove()
    return TeacherTargets(features, [maps[name] for name in hint_layers], teacher.checkpoint_sha256)


@torch.no_grad()
def caption_features(model: torch.nn.Module, unique_tokens: torch.Tensor, device: torch.device,
                     batch_size: int = 1024) -> torch.Tensor:
    """Unit text embeddings of each distinct caption, (captions, embed_dim) on `device`."""
    return torch.cat([model.encode_text(unique_tokens[start:start + batch_size].to(device), normalize=True)
                      for start in range(0, len(unique_tokens), batch_size)])


def locked_text_forward(model: torch.nn.Module, text_features: torch.Tensor, compile: bool = False) -> Callable:
    """A forward pass for a model whose text tower is locked: its caption embeddings cannot change,
    so they are looked up by caption id instead of recomputed, and no step pays for the text tower."""
    encode_image = torch.compile(model.encode_image) if compile else model.encode_image

    def forward(images: torch.Tensor, caption_ids: torch.Tensor):
        return encode_image(images, normalize=True), text_features[caption_ids], model.logit_scale.exp()

    return forward


def _batch_indices(config: TrainConfig, step: int, count: int) -> np.ndarray:
    per_epoch = count // config.batch_size
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([config.seed, epoch]).permutation(count)
    return order[position * config.batch_size:(position + 1) * config.batch_size]


def deterministic_training() -> None:
    """The mode every recipe trains in (and benchmarks time it in). Compiled CPU kernels otherwise
    accumulate some gradients with atomic adds, whose order varies from run to run: two compiled
    20-step runs left 175 of 201 tensors different. The mode also fills every new tensor with NaN
    to expose reads of uninitialised memory; a training step reads only what it wrote, and the
    fills cost 7 % of a taught toy-vit step."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False


def train(config: TrainConfig, out_path: Path, work_dir: Path,
          on_step: Callable[[int, float], None] | None = None,
          on_data: Callable[[int], None] | None = None,
          on_teacher: Callable[[int], None] | None = None) -> dict:
    """Train `config.arch`, write the checkpoint to `out_path`, and return a summary."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = (torch.are_deterministic_algorithms_enabled(),
                              torch.is_deterministic_algorithms_warn_only_enabled(),
                              torch.utils.deterministic.fill_uninitialized_memory)
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        deterministic_training()
        with _eager_fallback(config.compile):
            return _train(config, out_path, work_dir, on_step, on_data, on_teacher)
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic[0], warn_only=previous_deterministic[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous_deterministic[2]


def _train(config: TrainConfig, out_path: Path, work_dir: Path,
           on_step: Callable[[int, float], None] | None,
           on_data: Callable[[int], None] | None,
           on_teacher: Callable[[int], None] | None) -> dict:
    if config.hints and not config.teacher:
        raise ValueError("hints come from a teacher: set `teacher` too")
    register_toy_configs()
    work_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(config.arch)

    started = time.time()
    pixels_np, captions = generate_training_set(config.seed, config.train_images, progress=on_data,
                                                world=config.world)
    pixels = torch.from_numpy(pixels_np)
    tokens = tokenizer(captions)
    unique_tokens, caption_ids = torch.unique(tokens, dim=0, return_inverse=True)
    data_seconds = time.time() - started

    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model = open_clip.create_model(config.arch, pretrained=None).to(device)
    teacher_features, teacher_sha256, hint_maps, hints = None, None, [], None
    teacher_started = time.time()
    if config.teacher:
        taught = learn_from_teacher(model, config.teacher, tokenizer, pixels, device, on_teacher,
                                    [layer for _, layer in config.hints])
        teacher_features, teacher_sha256, hint_maps = taught.features, taught.sha256, taught.maps
    teacher_seconds = time.time() - teacher_started
    if config.hints:
        hints = HintHeads.for_teacher_maps(model.visual, config.hints, hint_maps).to(device)
    scaffolding = [hints] if hints is not None else []
    model.train()
    if teacher_features is not None:  # the teacher's text tower is locked
        forward = locked_text_forward(model, caption_features(model, unique_tokens, device), config.compile)
        text_input = caption_ids
    else:
        forward = torch.compile(model) if config.compile else model
        text_input = tokens
    mean, std = image_normalisation(model, device)
    optimizer = make_optimizer(model, config, *scaffolding)

    state_path = work_dir / f"{config.arch}-seed{config.seed}.state.pt"
    step = 0
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        if state.get("config") == asdict(config):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if hints is not None:
                hints.load_state_dict(state["hints"])
            step = int(state["step"])

    losses: list[float] = []
    train_started = time.time()
    while step < config.steps:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, step)
        index = torch.from_numpy(_batch_indices(config, step, len(captions)))
        images = normalise_pixels(pixels[index].to(device), mean, std)
        targets = teacher_features[index].to(device) if teacher_features is not None else None
        hint_loss = None
        if hints is not None:
            def hint_loss():
                return config.hint_weight * hints.loss([m[index].to(device) for m in hint_maps])
        loss = train_step(model, forward, optimizer, images, text_input[index].to(device), caption_ids[index].to(device),
                          targets, config.distill_weight, hint_loss)
        step += 1
        losses.append(loss)
        if on_step:
            on_step(step, loss)
        if step % config.state_every == 0 or step == config.steps:
            tmp = state_path.with_suffix(".tmp")
            torch.save({"config": asdict(config), "step": step, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), **({"hints": hints.state_dict()} if hints is not None else {})}, tmp)
            tmp.replace(state_path)

    if hints is not None:
        hints.detach_hooks()
    model.eval().cpu()
    summary = {
        "arch": config.arch,
        "config": asdict(config),
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "data_seconds": round(data_seconds, 1),
        **({"teacher_sha256": teacher_sha256, "teacher_seconds": round(teacher_seconds, 1)} if teacher_sha256 else {}),
        "train_seconds": round(time.time() - train_started, 1),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }
    write_checkpoint(
        model,
        out_path,
        metadata={
            META_CONFIG: open_clip.get_model_config(config.arch),
            META_VOCAB: tokenizer.vocabulary,
            "training": summary,
        },
    )
    return summary
