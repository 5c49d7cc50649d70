"""Objectives that add and scale like numbers, one value per image of a batch.

An objective maps the captured activations of a batch (`Activations`) to a (batch,) tensor:
image b's value. Rendering maximises the sum, and since the images of a batch do not
interact in the model (BatchNorm runs in eval mode), image b's gradient comes from its own
value only: a batch renders many units at once, each image driven by its own objective.
(Diversity is the one deliberate coupling: it compares images of the same group.)

Per-image parameters: `channel(layer, units)` takes one unit for the whole batch or one per
image, and every primitive takes `weight`, a number or one per image (0 switches the term
off for that image), so that one batch can mix channel, neuron, diversity and facet images.

    objective = channel("layer4", [3, 3, 7]) - 10.0 * diversity("layer3", groups=[0, 0, -1])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from precompute.architectures import ArchitectureSpec, LayerSpec
from precompute.errors import MicroscopeError


class Activations:
    """Captured activations of one batch (capture layout) with the layers' specs."""

    def __init__(self, captured: dict[str, torch.Tensor], spec: ArchitectureSpec) -> None:
        self.captured, self.spec = captured, spec

    @property
    def batch(self) -> int:
        return next(iter(self.captured.values())).shape[0]

    def raw(self, layer: str) -> torch.Tensor:
        return self.captured[layer]

    def maps(self, layer: str) -> torch.Tensor:
        """(batch, units, positions): spatial positions of a conv layer, the patch tokens of a
        ViT layer (the class token excluded), a single position for a pooled layer."""
        return positions_of(self.captured[layer], self.spec.layer(layer))


def positions_of(activation: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
    if layer.kind == "conv":
        return activation.flatten(2)
    if layer.kind == "tokens":
        return activation[:, :, 1:]
    return activation.unsqueeze(-1)


def centre_position(layer: LayerSpec) -> int:
    """Flat index of the centre of a layer's grid (row-major, as `unit_maxima` counts)."""
    if layer.spatial is None:
        raise MicroscopeError(f"layer {layer.name} has no positions: a neuron objective needs a spatial layer")
    h, w = layer.spatial
    return (h // 2) * w + w // 2


def _per_image(value, batch: int, device, dtype=None) -> torch.Tensor:
    tensor = torch.as_tensor(value, device=device, dtype=dtype)
    if tensor.dim() == 0:
        return tensor.expand(batch)
    if tensor.shape[0] != batch:
        raise ValueError(f"{tensor.shape[0]} per-image values for a batch of {batch}")
    return tensor


class Objective:
    """A function of a batch's activations giving one value per image; + - * / compose."""

    def __init__(self, fn: Callable[[Activations], torch.Tensor], layers: Sequence[str], name: str = "objective") -> None:
        self.fn, self.layers, self.name = fn, tuple(dict.fromkeys(layers)), name

    def __call__(self, acts: Activations) -> torch.Tensor:
        return self.fn(acts)

    def __add__(self, other):
        if isinstance(other, (int, float)):
            return Objective(lambda a: self(a) + other, self.layers, f"({self.name} + {other})")
        return Objective(lambda a: self(a) + other(a), self.layers + other.layers, f"({self.name} + {other.name})")

    def __radd__(self, other):
        if isinstance(other, (int, float)) and other == 0:  # sum([...]) starts at 0
            return self
        return self + other

    def __neg__(self):
        return -1.0 * self

    def __sub__(self, other):
        return self + (-other if isinstance(other, Objective) else -other)

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, scalar):
        if not isinstance(scalar, (int, float)):
            raise TypeError("objectives scale by numbers")
        return Objective(lambda a: scalar * self(a), self.layers, f"{scalar} * {self.name}")

    __rmul__ = __mul__

    def __truediv__(self, scalar):
        return self * (1.0 / scalar)

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def _gather_units(maps: torch.Tensor, units) -> torch.Tensor:
    """(batch, units, P) -> (batch, P): each image's own unit."""
    idx = _per_image(units, maps.shape[0], maps.device, torch.long)
    return maps[torch.arange(maps.shape[0], device=maps.device), idx]


def channel(layer: str, units, weight=1.0) -> Objective:
    """A unit's mean over positions (the class token excluded for ViTs)."""

    def fn(acts: Activations) -> torch.Tensor:
        maps = acts.maps(layer)
        values = _gather_units(maps, units).float().mean(dim=1)
        return values * _per_image(weight, maps.shape[0], maps.device, torch.float32)

    return Objective(fn, [layer], f"channel({layer})")


def neuron(layer: str, units, positions=None, weight=1.0, spec: ArchitectureSpec | None = None) -> Objective:
    """A unit at one position (flat row-major index of the layer's grid; the centre by
    default). Pooled layers have no positions and are refused."""

    def fn(acts: Activations) -> torch.Tensor:
        layer_spec = acts.spec.layer(layer)
        where = centre_position(layer_spec) if positions is None else positions
        if layer_spec.spatial is None:
            raise MicroscopeError(f"layer {layer} has no positions: a neuron objective needs a spatial layer")
        maps = acts.maps(layer)
        per_unit = _gather_units(maps, units)
        pos = _per_image(where, maps.shape[0], maps.device, torch.long)
        values = per_unit[torch.arange(maps.shape[0], device=maps.device), pos].float()
        return values * _per_image(weight, maps.shape[0], maps.device, torch.float32)

    if spec is not None:  # refuse early, before any optimisation
        centre_position(spec.layer(layer))
    return Objective(fn, [layer], f"neuron({layer})")


def direction(layer: str, vectors, weight=1.0) -> Objective:
    """The dot product of the activation at each position with a vector of the layer's
    space (one for all images, or one per image), averaged over positions."""

    def fn(acts: Activations) -> torch.Tensor:
        maps = acts.maps(layer).float()  # (B, C, P)
        vec = torch.as_tensor(vectors, device=maps.device, dtype=torch.float32)
        if vec.dim() == 1:
            vec = vec.expand(maps.shape[0], -1)
        if vec.shape[1] != maps.shape[1]:
            raise ValueError(f"a direction in {layer} needs {maps.shape[1]} values, got {vec.shape[1]}")
        values = torch.einsum("bcp,bc->bp", maps, vec).mean(dim=1)
        return values * _per_image(weight, maps.shape[0], maps.device, torch.float32)

    return Objective(fn, [layer], f"direction({layer})")


def gram(maps: torch.Tensor) -> torch.Tensor:
    """(batch, C, P) -> each image's Gram matrix over positions, L2-normalised: (batch, C*C)."""
    maps = maps.float()
    grams = torch.bmm(maps, maps.transpose(1, 2)).flatten(1)
    return grams / grams.norm(dim=1, keepdim=True).clamp_min(1e-10)


def gram_cosines(maps: torch.Tensor) -> torch.Tensor:
    """(batch, batch) cosine similarities between the images' Gram matrices."""
    g = gram(maps)
    return g @ g.T


def diversity(layer: str, groups, weight=1.0) -> Objective:
    """Lucid's diversity term, per group: minus each image's summed Gram-matrix cosine with
    the other images of its group, over the group size (so a group's total is Lucid's
    -sum_a sum_{b != a} cos(G_a, G_b) / n). `groups` gives each image's group id; -1 (or a
    group of one) takes no part. Subtract it from an objective scaled by a positive weight
    (`channel(...) + w * diversity(...)` already carries the minus sign)."""

    def fn(acts: Activations) -> torch.Tensor:
        maps = acts.maps(layer)
        batch = maps.shape[0]
        ids = _per_image(groups, batch, maps.device, torch.long)
        same = (ids[:, None] == ids[None, :]) & (ids[:, None] >= 0)
        same &= ~torch.eye(batch, dtype=torch.bool, device=maps.device)
        members = same.sum(dim=1).float() + 1.0
        cos = gram_cosines(maps)
        values = -(cos * same).sum(dim=1) / members
        return values * _per_image(weight, batch, maps.device, torch.float32)

    return Objective(fn, [layer], f"diversity({layer})")


def faceted(objective: Objective, layer: str, probe_weights, weight=1.0, positive: bool = True) -> Objective:
    """The faceted objective of "Multimodal Neurons" (appendix): f(g(x)) + w^T (g(x) * grad f(g(x))),
    with g the activations of `layer` (a lower layer), f the rest of `objective`, w a linear
    probe's weights on g's mean over positions (one probe for all images, or one per image;
    zeros where an image has no facet). The gradient acts as a filter that keeps the parts
    of g that matter to f; it is taken per image and held fixed (not differentiated again).

    The filter is the gradient's positive part, the parts of g that excite f, unless
    `positive=False` asks for the article's signed gradient. With the signed
    gradient the term's own gradient in g is w * grad f, which where grad f < 0 (a part of g
    that inhibits the unit) points against the probe: the optimiser then lowers what the probe
    looks for in the unit's inhibitory parts, and the facet image can score lower on its probe
    than the plain one. With the positive part the term's gradient is w scaled by a
    non-negative filter, always on the probe's side.

    The activations must be captured with `capture_with_grad(..., upstream=True)` so that
    f's gradient with respect to g exists."""

    def fn(acts: Activations) -> torch.Tensor:
        value = objective(acts)
        g_raw = acts.raw(layer)
        (grad,) = torch.autograd.grad(value.sum(), g_raw, retain_graph=True)
        layer_spec = acts.spec.layer(layer)
        g = positions_of(g_raw, layer_spec).float()
        filt = positions_of(grad.detach(), layer_spec).float()
        if positive:
            filt = filt.clamp_min(0)
        w = torch.as_tensor(probe_weights, device=g.device, dtype=torch.float32)
        if w.dim() == 1:
            w = w.expand(g.shape[0], -1)
        # Summed over positions: for a piecewise-linear f, sum(g * grad f) is about f itself
        # (Euler) and the positive part's sum is f's excitatory share, so with unit-RMS
        # weights the facet term is on the scale of the objective whatever the layer.
        term = torch.einsum("bcp,bc->b", g * filt, w)
        return value + term * _per_image(weight, g.shape[0], g.device, torch.float32)

    return Objective(fn, objective.layers + (layer,), f"faceted({objective.name}, {layer})")


@dataclass(frozen=True)
class FacetProbe:
    """A linear probe on a layer's mean activations: score(x) = weights . mean(g(x)) + bias."""

    model_id: str
    layer: str
    facet: str
    weights: tuple[float, ...]
    bias: float

    def score(self, mean_activations: torch.Tensor) -> torch.Tensor:
        w = torch.tensor(self.weights, dtype=torch.float32, device=mean_activations.device)
        return mean_activations.float() @ w + self.bias

    def direction(self) -> torch.Tensor:
        """The weights scaled to a root mean square of 1: the probe's direction, for the
        faceted objective. A logistic regression's weights have the scale the regulariser
        and the separation of its images leave (a separable facet's grow until the
        regulariser stops them), not one that means anything to the unit's objective; with
        unit-RMS weights the facet term of `faceted` is on the objective's own scale and
        the facet weight means the same for every probe and model."""
        w = torch.tensor(self.weights, dtype=torch.float32)
        rms = w.square().mean().sqrt()
        return w / rms if rms > 0 else w
