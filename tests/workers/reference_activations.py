"""What a unit's ranking value is, computed the plain way for tests to compare the jobs with:
one forward pass of the open_clip vision tower with a hook on the module a layer names,
then numpy. Independent of precompute.capture and precompute.examples.ranking_values."""

from __future__ import annotations

import numpy as np
import torch

# (model arch, layer) -> (module of the visual tower, whether its input or output is read).
# ResNet blocks are read before their final ReLU (the input of `act3`), so inhibition shows;
# a ViT MLP's neurons are its GELU's outputs.
MODULES = {
    ("toy-rn", "layer4"): ("layer4.0.act3", "input"),
    ("toy-rn", "layer3"): ("layer3.1.act3", "input"),
    ("toy-rn", "attnpool"): ("attnpool", "output"),
    ("toy-vit", "transformer.resblocks.5.mlp"): ("transformer.resblocks.5.mlp.gelu", "output"),
}


def reference_values(model: torch.nn.Module, arch: str, layer: str, images: torch.Tensor) -> np.ndarray:
    """(images, units) float32: the layer's value per unit, its maximum over the spatial
    positions (patch tokens for a ViT, the class token left out) where the layer has any."""
    path, side = MODULES[(arch, layer)]
    module = model.visual.get_submodule(path)
    seen: list[torch.Tensor] = []
    if side == "input":
        handle = module.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].clone()))
    else:
        handle = module.register_forward_hook(lambda _m, _inputs, output: seen.append(output.clone()))
    model.eval()
    try:
        with torch.no_grad():
            model.visual(images)
    finally:
        handle.remove()
    values = seen[0].float().numpy()
    batch = images.shape[0]
    if values.ndim == 2:  # pooled: (batch, units)
        return values
    if values.ndim == 4:  # conv map: (batch, units, h, w)
        return values.reshape(batch, values.shape[1], -1).max(axis=2)
    if values.shape[0] != batch:  # tokens first: (tokens, batch, units)
        values = values.transpose(1, 0, 2)
    return values[:, 1:, :].max(axis=1)  # (batch, tokens, units) without the class token
