"""Batched rendering: one optimisation renders many units, one image per (unit, kind, variant).

`render(loaded, layer, items, settings)` optimises a batch of images, image b driven by item
b's objective only: its unit's channel (mean over positions) or neuron (one position), a
diversity member (the channel plus Lucid's diversity term against the other members of its
unit's group, on a lower layer) or a facet (the faceted objective with that facet's probe).
Items are cut into batches of `settings.batch_size` (by default as many as the device's
memory holds), keeping each diversity group in one batch and facet images in batches of
their own (`kind_groups`).

- Reproducible: each image starts from its own seed (from the settings' seed, the unit, the
  kind and the variant), each batch draws its transformations from a generator seeded by
  its first item, so on CPU the same call gives the same bytes.
- For the first `redirect_steps` steps every ReLU of the tower is a redirected ReLU (Lucid):
  an image whose gradient would be all zero at a ReLU (a unit dead on the starting image)
  gets the gradient that pushes the negative inputs up instead, per image. A ViT's GELUs
  get the same: below its minimum a GELU's gradient drives a unit further down, to 0.
- On CUDA the tower runs channels-last under bfloat16 autocast; parameters, transforms and
  objective reductions stay float32.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from precompute.architectures import ArchitectureSpec, LayerSpec
from precompute.capture import capture, capture_with_grad
from precompute.errors import MicroscopeError
from precompute.featureviz.objectives import (
    Activations,
    FacetProbe,
    Objective,
    centre_position,
    channel,
    diversity,
    faceted,
    neuron,
    positions_of,
)
from precompute.featureviz.param import ImageParam, Normalise, to_uint8
from precompute.featureviz.transform import RandomTransform, TransformSettings, resize
from precompute.registry import LoadedModel

KINDS = ("channel", "neuron", "diversity", "facet")
FACET_FILTERS = ("positive", "signed")
MAX_AUTO_BATCH = 256


@dataclass(frozen=True)
class RenderItem:
    unit: int
    kind: str = "channel"
    variant: str = ""  # diversity member index, facet name
    position: int | None = None  # neuron kind: flat grid position (default: the centre)


@dataclass(frozen=True)
class RenderSettings:
    steps: int = 512
    lr: float | None = None  # default: `lucid_learning_rate(steps)`
    param: str = "fourier"  # "fourier" | "pixel"
    sd: float = 0.01
    decay: float = 1.0
    transforms: str = "lucid"  # "lucid" | "none"
    redirect_steps: int = 16
    diversity_weight: float = 0.5  # times the unit's objective scale (see `render`)
    diversity_layer: str | None = None  # default: `lower_layer`
    facet_weight: float = 1.0  # on the probe's unit-RMS direction (`FacetProbe.direction`)
    facet_filter: str = "positive"  # the gradient filter's positive part, or "signed" (`faceted`)
    seed: int = 0
    batch_size: int | None = None  # default: from the device's memory
    image_size: int | None = None  # default: the model's input size

    def validate(self) -> None:
        if self.steps < 1:
            raise MicroscopeError("--steps must be at least 1")
        if self.lr is not None and self.lr <= 0:
            raise MicroscopeError("the learning rate must be positive")
        if self.param not in ("fourier", "pixel"):
            raise MicroscopeError("the parameterisation must be fourier or pixel")
        if self.transforms not in ("lucid", "none"):
            raise MicroscopeError("transforms must be lucid or none")
        if self.batch_size is not None and self.batch_size < 1:
            raise MicroscopeError("--batch-size must be at least 1")
        if self.facet_filter not in FACET_FILTERS:
            raise MicroscopeError(f"the facet filter must be one of {', '.join(FACET_FILTERS)}")

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else lucid_learning_rate(self.steps)

    def describe(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "batch_size"}
        out["lr"] = self.learning_rate()
        return out


LUCID_LR, LUCID_STEPS = 0.05, 512


def lucid_learning_rate(steps: int) -> float:
    """Lucid's Adam learning rate, 0.05 for its 512 steps, scaled up for shorter runs.

    Adam moves each parameter by about the learning rate per step whatever the gradient's
    size, so how far an image can travel from its grey start is about lr x steps: a 128-step
    render at Lucid's rate stops a quarter of the way (saturated colours, which the colour
    decorrelation puts on its weakest axes, come last). Shorter runs keep Lucid's distance,
    0.05 x 512; longer runs keep Lucid's rate."""
    return LUCID_LR * max(1.0, LUCID_STEPS / steps)


@dataclass
class RenderResult:
    item: RenderItem
    image: np.ndarray  # (h, w, 3) uint8
    final_activation: float  # the unit's channel (or neuron) value on the final image, untransformed
    seed: int
    probe_score: float | None = None  # facets: the facet probe's score of the final image
    parameters: dict = field(default_factory=dict)


def lower_layer(spec: ArchitectureSpec, layer: str) -> str:
    """The lower layer that diversity and facet probes use for `layer`: the previous ResNet
    stage (layer3 for layer4), or the MLP of the block half-way up a ViT."""
    target = spec.layer(layer)
    if spec.family == "resnet":
        if target.name == "attnpool":
            return "layer3"
        stage = int(target.name.split(".")[0].removeprefix("layer"))
        return f"layer{max(1, stage - 1)}"
    block = int(target.name.split(".")[2])
    return f"transformer.resblocks.{block // 2}.mlp"


def item_seed(seed: int, item: RenderItem) -> int:
    text = f"{seed}/{item.unit}/{item.kind}/{item.variant}/{item.position}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


# -- redirected activations --------------------------------------------------------------


class _Redirected(torch.autograd.Function):
    """An activation whose backward is Lucid's redirected ReLU gradient, generalised to the
    GELU family: per image, where some positive input gets a gradient the activation's own
    gradient passes; an image whose positive inputs get none (a unit dead on it) gets the
    loss gradient itself, except where it would push a negative input lower."""

    @staticmethod
    def forward(ctx, x, fn):
        ctx.save_for_backward(x)
        ctx.fn = fn
        return fn(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if ctx.fn is _relu:
            own = grad * (x > 0)
        else:
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                (own,) = torch.autograd.grad(ctx.fn(leaf), leaf, grad)
        # A GELU is never flat, but below its minimum (x < -0.75) its gradient points down,
        # towards its limit 0 from below: a unit there is as dead as behind a ReLU.
        passes = (own * (x > 0)).flatten(1).norm(dim=1) > 0
        redirected = torch.where((x < 0) & (grad > 0), torch.zeros_like(grad), grad)
        shape = (-1,) + (1,) * (grad.dim() - 1)
        return torch.where(passes.view(shape), own, redirected), None


def _relu(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(0)


def redirected_relu(x: torch.Tensor) -> torch.Tensor:
    return _Redirected.apply(x, _relu)


def redirected_activation(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """`module`'s forward computed through a redirected gradient (batch-first inputs)."""
    forward = type(module).forward.__get__(module)
    return lambda x: _Redirected.apply(x, forward)


def _redirectable(module: nn.Module) -> bool:
    from open_clip.transformer import QuickGELU

    return isinstance(module, (nn.ReLU, nn.GELU, QuickGELU))


@contextmanager
def redirect_activations(model: nn.Module) -> Iterator[int]:
    """Every ReLU and GELU under `model` computes its redirected form while inside; yields
    how many. The activations' inputs are batch-first (open_clip's ResNets and its
    batch-first transformers), so that the redirection is decided per image."""
    modules = [m for m in model.modules() if _redirectable(m)]
    for module in modules:
        module.forward = redirected_relu if isinstance(module, nn.ReLU) else redirected_activation(module)
    try:
        yield len(modules)
    finally:
        for module in modules:
            del module.forward


# -- device ---------------------------------------------------------------------------


def _activation_elements(loaded: LoadedModel, layers: Sequence[str], size: int) -> int:
    """Elements every module outputs for one image: what a step keeps for backward."""
    visual = loaded.model.visual
    total = [0]

    def hook(_m, _i, output):
        if isinstance(output, torch.Tensor):
            total[0] += output.numel()

    handles = [m.register_forward_hook(hook) for m in visual.modules() if not list(m.children())]
    try:
        probe = torch.zeros(1, 3, size, size, device=loaded.device)
        capture(loaded, probe, list(layers))
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.7)
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        pages = 8 << 30
    return int(pages * 0.25)  # leave the rest to the store, the loader and other processes


def auto_batch_size(loaded: LoadedModel, layers: Sequence[str], size: int) -> int:
    """How many images fit in one step on the model's device: activations kept for backward
    (about three copies: values, gradients, autograd's saved inputs) per image against the
    free memory, at most MAX_AUTO_BATCH."""
    bytes_per = 2 if loaded.device.type == "cuda" else 4
    per_image = max(1, _activation_elements(loaded, layers, size)) * bytes_per * 3
    per_image += 3 * size * size * 4 * 8  # the image, its spectrum, Adam's moments, transforms
    return int(max(1, min(MAX_AUTO_BATCH, _available_bytes(loaded.device) // per_image)))


@contextmanager
def _fast_layout(loaded: LoadedModel):
    if loaded.device.type != "cuda" or loaded.spec.family != "resnet":
        yield
        return
    loaded.model.visual.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        loaded.model.visual.to(memory_format=torch.contiguous_format)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


# -- planning --------------------------------------------------------------------------


def check_items(spec: ArchitectureSpec, layer: str, items: Sequence[RenderItem], probes: Mapping[str, FacetProbe]) -> None:
    target = spec.layer(layer)
    for item in items:
        if item.kind not in KINDS:
            raise MicroscopeError(f"unknown visualization kind '{item.kind}'; kinds: {', '.join(KINDS)}")
        if not 0 <= item.unit < target.units:
            raise MicroscopeError(f"{spec.name} {layer} has units 0-{target.units - 1}; there is no unit {item.unit}")
        if item.kind == "neuron":
            centre_position(target)  # refuses layers without positions
            if item.position is not None and not 0 <= item.position < target.spatial[0] * target.spatial[1]:
                raise MicroscopeError(f"position {item.position} is outside {layer}'s {target.spatial} grid")
        if item.kind == "facet" and item.variant not in probes:
            raise MicroscopeError(f"no probe for facet '{item.variant}'")


def batches_of(items: Sequence[RenderItem], size: int) -> list[list[RenderItem]]:
    """Consecutive batches of at most `size` items (larger if one diversity group is), never
    splitting a unit's diversity group."""
    groups: list[list[RenderItem]] = []
    for item in items:
        if item.kind == "diversity" and groups and groups[-1][0].kind == "diversity" and groups[-1][0].unit == item.unit:
            groups[-1].append(item)
        else:
            groups.append([item])
    out: list[list[RenderItem]] = []
    for group in groups:
        if out and len(out[-1]) + len(group) <= size:
            out[-1].extend(group)
        else:
            out.append(list(group))
    return out


def batch_objective(spec: ArchitectureSpec, layer: str, items: Sequence[RenderItem], settings: RenderSettings,
                    probes: Mapping[str, FacetProbe], scale: torch.Tensor | None = None) -> Objective:
    """One objective for a batch of mixed items, each image's term its own."""
    units = [item.unit for item in items]
    is_neuron = [1.0 if item.kind == "neuron" else 0.0 for item in items]
    main: Objective = channel(layer, units, weight=[1.0 - n for n in is_neuron])
    if any(is_neuron):
        target = spec.layer(layer)
        positions = [item.position if item.position is not None else centre_position(target) if n else 0
                     for item, n in zip(items, is_neuron)]
        main = main + neuron(layer, units, positions, weight=is_neuron)
    total = main
    facet_items = [item for item in items if item.kind == "facet"]
    for probe_layer in dict.fromkeys(probes[item.variant].layer for item in facet_items):
        width = spec.layer(probe_layer).units
        weights = torch.zeros(len(items), width)
        for b, item in enumerate(items):
            if item.kind == "facet" and probes[item.variant].layer == probe_layer:
                weights[b] = probes[item.variant].direction()
        total = faceted(total, probe_layer, weights, weight=settings.facet_weight,
                        positive=settings.facet_filter == "positive")
    if any(item.kind == "diversity" for item in items):
        div_layer = settings.diversity_layer or lower_layer(spec, layer)
        groups = [item.unit if item.kind == "diversity" else -1 for item in items]
        # Lucid weighs diversity against an objective of known scale; units differ by orders
        # of magnitude, so each group's weight is relative to its unit's own scale.
        weight = settings.diversity_weight * (scale if scale is not None else torch.ones(len(items)))
        total = total + diversity(div_layer, groups, weight=weight)
    return total


def _facet_layers(items: Sequence[RenderItem], probes: Mapping[str, FacetProbe]) -> list[str]:
    return list(dict.fromkeys(probes[item.variant].layer for item in items if item.kind == "facet"))


# -- rendering --------------------------------------------------------------------------


def render(loaded: LoadedModel, layer: str, items: Sequence[RenderItem], settings: RenderSettings = RenderSettings(),
           probes: Mapping[str, FacetProbe] | None = None,
           on_batch: Callable[[list[RenderResult]], None] | None = None) -> list[RenderResult]:
    """Render `items` of `layer`; results in the order of `items`."""
    settings.validate()
    probes = dict(probes or {})
    spec = loaded.spec
    check_items(spec, layer, items, probes)
    for probe in probes.values():
        if probe.model_id not in (loaded.model_id, "*") and probe.model_id != loaded.spec.name:
            raise MicroscopeError(f"facet probe '{probe.facet}' was trained on model '{probe.model_id}', not '{loaded.model_id}'")
        spec.layer(probe.layer)
    size = settings.image_size or spec.image_size
    layers = [layer]
    if any(item.kind == "diversity" for item in items):
        layers.append(settings.diversity_layer or lower_layer(spec, layer))
    layers += _facet_layers(items, probes)
    layers = list(dict.fromkeys(layers))
    batch_size = settings.batch_size or auto_batch_size(loaded, layers, spec.image_size)
    order: list[int] = []
    results: list[RenderResult] = []
    with _fast_layout(loaded):
        for indices in kind_groups(items):
            order += indices
            for batch in batches_of([items[i] for i in indices], batch_size):
                done = _render_batch(loaded, layer, batch, settings, probes, size)
                results.extend(done)
                if on_batch is not None:
                    on_batch(done)
    by_index = dict(zip(order, results))
    return [by_index[i] for i in range(len(items))]


def kind_groups(items: Sequence[RenderItem]) -> list[list[int]]:
    """Indices of `items` in the groups that are optimised in batches of their own: facet
    images, whose objective takes the gradient at a lower layer (an extra backward pass
    through every layer above it, for the whole batch), apart from the rest."""
    facets = [i for i, item in enumerate(items) if item.kind == "facet"]
    others = [i for i, item in enumerate(items) if item.kind != "facet"]
    return [group for group in (others, facets) if group]


def _forward(loaded: LoadedModel, images: torch.Tensor, layers: list[str], grad: bool, upstream: bool = False):
    if loaded.device.type == "cuda" and loaded.spec.family == "resnet":
        images = images.contiguous(memory_format=torch.channels_last)
    with _autocast(loaded.device):
        if grad:
            return capture_with_grad(loaded, images, layers, upstream=upstream)
        return capture(loaded, images, layers)


def _render_batch(loaded: LoadedModel, layer: str, items: list[RenderItem], settings: RenderSettings,
                  probes: Mapping[str, FacetProbe], size: int) -> list[RenderResult]:
    spec, device = loaded.spec, loaded.device
    normalise = Normalise.of(loaded.preprocess_cfg).to(device)
    seeds = [item_seed(settings.seed, item) for item in items]
    param = ImageParam(settings.param, seeds, size, sd=settings.sd, decay=settings.decay).to(device)
    transform_settings = TransformSettings.lucid(spec.image_size) if settings.transforms == "lucid" else TransformSettings.none()
    transform = RandomTransform(transform_settings, spec.image_size)
    generator = torch.Generator()
    generator.manual_seed(seeds[0])
    has_div = any(item.kind == "diversity" for item in items)
    scale = None
    if has_div:  # each unit's scale: its activation spread on the starting images, at least 1e-3
        with torch.no_grad():
            start = _forward(loaded, normalise(resize(param(), spec.image_size)), [layer], grad=False)
        maps = positions_of(start[layer].float(), spec.layer(layer))
        units = torch.tensor([item.unit for item in items], device=maps.device)
        own = maps[torch.arange(len(items), device=maps.device), units]
        scale = own.abs().mean(dim=1).clamp_min(1e-3).cpu()
        # The scale of a unit that is dead at the start is unknown: fall back to the batch's.
        scale = torch.where(scale > 1e-3, scale, scale.max())
    objective = batch_objective(spec, layer, items, settings, probes, scale)
    layers = list(dict.fromkeys((layer, *objective.layers)))
    upstream = any(item.kind == "facet" for item in items)
    optimiser = torch.optim.Adam(param.parameters(), lr=settings.learning_rate())
    for step in range(settings.steps):
        context = redirect_activations(loaded.model.visual) if step < settings.redirect_steps else nullcontext()
        with context:
            images = transform(param(), generator)
            captured = _forward(loaded, normalise(images), layers, grad=True, upstream=upstream)
            values = objective(Activations(captured, spec))
            loss = -values.float().sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
        optimiser.step()
    with torch.no_grad():
        final = param()
        probe_layers = _facet_layers(items, probes)
        captured = _forward(loaded, normalise(resize(final, spec.image_size)), [layer, *probe_layers], grad=False)
        finals = final_values(spec, layer, items, captured)
        scores = {}
        for b, item in enumerate(items):
            if item.kind == "facet":
                probe = probes[item.variant]
                mean = positions_of(captured[probe.layer][b : b + 1].float(), spec.layer(probe.layer)).mean(dim=2)
                scores[b] = float(probe.score(mean)[0])
    pixels = to_uint8(final)
    base = {**settings.describe(), "param": param.describe(), "transforms": transform_settings.describe(),
            "image_size": size}
    if has_div:
        base["diversity_layer"] = settings.diversity_layer or lower_layer(spec, layer)
    out = []
    for b, item in enumerate(items):
        parameters = dict(base)
        if item.kind == "neuron":
            parameters["position"] = item.position if item.position is not None else centre_position(spec.layer(layer))
        if item.kind == "facet":
            parameters["facet_layer"] = probes[item.variant].layer
        out.append(RenderResult(item, pixels[b], float(finals[b]), seeds[b], scores.get(b), parameters))
    return out


def final_values(spec: ArchitectureSpec, layer: str, items: Sequence[RenderItem], captured: dict[str, torch.Tensor]) -> list[float]:
    """Each item's own unit value: channel mean over positions, or neuron value at its position."""
    maps = positions_of(captured[layer].float(), spec.layer(layer))
    out = []
    for b, item in enumerate(items):
        if item.kind == "neuron":
            pos = item.position if item.position is not None else centre_position(spec.layer(layer))
            out.append(float(maps[b, item.unit, pos]))
        else:
            out.append(float(maps[b, item.unit].mean()))
    return out


def unit_values(loaded: LoadedModel, layer: str, images: torch.Tensor, units: Sequence[int]) -> np.ndarray:
    """(images, units) channel values (mean over positions) of preprocessed images: the same
    measure `final_activation` uses, for checks against dataset images."""
    captured = capture(loaded, images, [layer])
    maps = positions_of(captured[layer].float(), loaded.spec.layer(layer))
    return maps[:, list(units)].mean(dim=2).cpu().numpy()


def rgb_batch_to_model(loaded: LoadedModel, pixels: np.ndarray) -> torch.Tensor:
    """(n, h, w, 3) uint8 visualizations -> normalised model input."""
    images = torch.from_numpy(np.array(pixels)).permute(0, 3, 1, 2).float() / 255.0
    images = resize(images, loaded.spec.image_size)
    return Normalise.of(loaded.preprocess_cfg)(images)
