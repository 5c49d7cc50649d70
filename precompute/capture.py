"""Activation capture: run images through a vision tower and keep only the named layers.

Forward hooks copy out the requested activations and the forward pass stops as soon as the
last of them has been seen, so capturing `layer4` skips the attention pool and capturing an
early layer skips most of the tower: capture never costs more than the bare forward pass.
Shapes follow `LayerSpec.capture_shape` (DESIGN.md: stable names, TransformerLens-style).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import torch

from precompute.architectures import ArchitectureSpec, LayerSpec
from precompute.registry import LoadedModel


class _StopForward(Exception):
    """Raised from a hook once every requested layer has been captured."""


def _to_capture_layout(layer: LayerSpec, output: torch.Tensor, batch_first: bool) -> torch.Tensor:
    if layer.kind == "tokens":
        tokens = output if batch_first else output.transpose(0, 1)
        return tokens.transpose(1, 2)  # (batch, units, tokens): units first, like conv maps
    return output


def _from_capture_layout(layer: LayerSpec, kept: torch.Tensor, batch_first: bool) -> torch.Tensor:
    if layer.kind == "tokens":
        tokens = kept.transpose(1, 2)
        return tokens if batch_first else tokens.transpose(0, 1)
    return kept


def _resolve(spec: ArchitectureSpec, layers: str | Iterable[str]) -> list[LayerSpec]:
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ValueError("name at least one layer to capture")
    return [spec.layer(name) for name in dict.fromkeys(names)]


@contextmanager
def _hooks(
    loaded: LoadedModel,
    layers: Sequence[LayerSpec],
    store: dict[str, torch.Tensor],
    detach: bool,
    pre_activation: bool = False,
    upstream: bool = False,
):
    visual = loaded.model.visual
    transformer = getattr(visual, "transformer", None)
    batch_first = getattr(transformer, "batch_first", True)
    handles = []

    def keep(layer: LayerSpec, tensor: torch.Tensor) -> None:
        store[layer.name] = _to_capture_layout(layer, tensor, batch_first)
        if len(store) == len(layers):
            raise _StopForward

    def make_hook(layer: LayerSpec):
        def hook(_module, _inputs, output):
            if not upstream:
                keep(layer, output.detach() if detach else output)
                return None
            # The kept tensor feeds the rest of the forward pass (the module's output is
            # replaced by the same values, rebuilt from it), so gradients of later layers
            # with respect to it exist: what the faceted objective needs.
            kept = _to_capture_layout(layer, output, batch_first)
            store[layer.name] = kept
            if len(store) == len(layers):
                raise _StopForward
            return _from_capture_layout(layer, kept, batch_first)

        return hook

    def make_pre_hook(layer: LayerSpec):
        def pre_hook(_module, inputs):
            # The ReLU that follows is in-place: without the clone the stored tensor would be
            # rectified under our feet (unless this was the last layer and the forward stops).
            tensor = inputs[0].detach() if detach else inputs[0]
            keep(layer, tensor.clone())

        return pre_hook

    try:
        for layer in layers:
            if pre_activation and layer.pre_activation_module:
                module = visual.get_submodule(layer.pre_activation_module)
                handles.append(module.register_forward_pre_hook(make_pre_hook(layer)))
            else:
                handles.append(visual.get_submodule(layer.module).register_forward_hook(make_hook(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _run(
    loaded: LoadedModel, images: torch.Tensor, layers, detach: bool, pre_activation: bool = False,
    upstream: bool = False,
) -> dict[str, torch.Tensor]:
    specs = _resolve(loaded.spec, layers)
    captured: dict[str, torch.Tensor] = {}
    images = images.to(loaded.device, non_blocking=True)
    with _hooks(loaded, specs, captured, detach, pre_activation, upstream):
        try:
            loaded.model.visual(images)
        except _StopForward:
            pass
    return {spec.name: captured[spec.name] for spec in specs}


def capture(
    loaded: LoadedModel,
    images: torch.Tensor,
    layers: str | Iterable[str],
    *,
    pre_activation: bool = False,
) -> dict[str, torch.Tensor]:
    """Activations of `layers` for a batch of preprocessed images, without autograd state.

    ResNet layers come back as (batch, units, h, w), `attnpool` as (batch, units) and ViT
    layers as (batch, units, 1 + h*w) with the class token first.

    `pre_activation=True` reads layers that end in a ReLU (ResNet blocks and stages) just
    before it, so negative values (inhibition) survive; other layers are read as usual.
    """
    was_training = loaded.model.training
    loaded.model.eval()  # BatchNorm must use its running statistics (DESIGN.md pitfalls)
    try:
        with torch.inference_mode():
            return _run(loaded, images, layers, detach=True, pre_activation=pre_activation)
    finally:
        loaded.model.train(was_training)


def capture_with_grad(loaded: LoadedModel, images: torch.Tensor, layers: str | Iterable[str], *,
                      upstream: bool = False) -> dict[str, torch.Tensor]:
    """Like `capture`, but the activations stay in the autograd graph of `images`, for
    optimisation (feature visualisation, attribution). The model's weights stay frozen.

    `upstream=True` makes each returned tensor (in capture layout) the one the rest of the
    forward pass is computed from, so that gradients of a later layer with respect to an
    earlier captured one can be taken (`torch.autograd.grad(later.sum(), earlier)`)."""
    loaded.model.eval()
    with torch.enable_grad():
        return _run(loaded, images, layers, detach=False, upstream=upstream)


def split_tokens(activation: torch.Tensor, layer: LayerSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a ViT token capture into (class token (batch, units), patch maps (batch, units, h, w))."""
    if layer.kind != "tokens" or layer.spatial is None:
        raise ValueError(f"{layer.name} is not a token layer")
    h, w = layer.spatial
    return activation[:, :, 0], activation[:, :, 1:].reshape(*activation.shape[:2], h, w)


def spatial_maps(activation: torch.Tensor, layer: LayerSpec) -> torch.Tensor | None:
    """(batch, units, h, w) maps for spatial layers, None for pooled ones."""
    if layer.kind == "conv":
        return activation
    if layer.kind == "tokens":
        return split_tokens(activation, layer)[1]
    return None


def unit_maxima(activation: torch.Tensor, layer: LayerSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each unit's activation per image, as Microscope ranks them: the spatial maximum over
    the map (patch tokens for ViTs), with the flat index of where it is; pooled layers have
    no position."""
    maps = spatial_maps(activation, layer)
    if maps is None:
        return activation, None
    values, positions = maps.flatten(2).max(dim=2)
    return values, positions
