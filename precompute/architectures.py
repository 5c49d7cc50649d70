"""The table of supported vision towers: their layers, unit counts and spatial shapes.

Shapes are derived from the open_clip model config, so one rule per tower family covers
every size (RN50 ... RN50x64, ViT-B-32 ... ViT-L-14) and our embedded toy models alike.
Layer names are the module paths of the open_clip model with the leading `visual.` dropped
(DESIGN.md, "Naming units").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import open_clip

from precompute.errors import UnknownArchitectureError, UnknownLayerError
from precompute.toy import register_toy_configs

register_toy_configs()

# Architectures we document and test. Any other open_clip config of a supported family
# still works through `architecture()`; this list is what the table advertises.
SUPPORTED_ARCHITECTURES: tuple[str, ...] = (
    "RN50",
    "RN101",
    "RN50x4",
    "RN50x16",
    "RN50x64",
    "ViT-B-32",
    "ViT-B-16",
    "ViT-L-14",
    "toy-rn",
    "toy-vit",
)


@dataclass(frozen=True)
class LayerSpec:
    """One addressable layer of a vision tower.

    kind:
      - "conv": a ResNet activation, captured as (batch, units, height, width)
      - "pooled": a vector per image (attention pool output), captured as (batch, units)
      - "tokens": a ViT activation per token, captured as (batch, units, 1 + height*width),
        the class token first and the patch tokens in row-major order after it.
    """

    name: str
    module: str  # path under model.visual of the module whose output is captured
    kind: str
    units: int
    spatial: tuple[int, int] | None
    position: int  # order in the forward pass, for listing and for stopping early
    # Module whose *input* is the same activation before its final ReLU (ResNet blocks end in
    # an in-place `act3`), read by `capture(..., pre_activation=True)` so that rankings can see
    # inhibition (negative values), as the Distill article does. None where the captured
    # activation is not followed by a ReLU (ViT MLPs are post-GELU: negative values exist).
    pre_activation_module: str | None = None

    @property
    def has_class_token(self) -> bool:
        return self.kind == "tokens"

    def capture_shape(self, batch: int) -> tuple[int, ...]:
        if self.kind == "pooled" or self.spatial is None:
            return (batch, self.units)
        h, w = self.spatial
        if self.kind == "tokens":
            return (batch, self.units, 1 + h * w)
        return (batch, self.units, h, w)


@dataclass(frozen=True)
class ArchitectureSpec:
    name: str
    family: str  # "resnet" | "vit"
    image_size: int
    embed_dim: int
    layers: tuple[LayerSpec, ...] = field(repr=False)

    def layer(self, name: str) -> LayerSpec:
        for spec in self.layers:
            if spec.name == name:
                return spec
        raise UnknownLayerError(
            f"{self.name} has no layer '{name}'; valid layers: {', '.join(self.layer_names())}"
        )

    def layer_names(self) -> list[str]:
        return [spec.name for spec in self.layers]

    @property
    def final_layer(self) -> LayerSpec:
        """The last layer whose units are neurons of the tower (before pooling), the one
        Microscope catalogues: `layer4` for ResNets, the last MLP for ViTs."""
        if self.family == "resnet":
            return self.layer("layer4")
        return [spec for spec in self.layers if spec.name.endswith(".mlp")][-1]


def _image_size(vision_cfg: dict) -> int:
    size = vision_cfg.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if size[0] != size[1]:
            raise UnknownArchitectureError("non-square image sizes are not supported")
        size = size[0]
    return int(size)


def _resnet_layers(vision_cfg: dict, embed_dim: int) -> list[LayerSpec]:
    width = vision_cfg.get("width", 64)
    depths = vision_cfg["layers"]
    size = _image_size(vision_cfg)
    specs: list[LayerSpec] = []
    position = 0
    # The stem halves the image twice (strided conv, then average pool); each later stage
    # after the first halves it again. Bottleneck blocks expand channels four times.
    for stage, depth in enumerate(depths, start=1):
        side = size // (4 * 2 ** (stage - 1))
        channels = width * 2 ** (stage - 1) * 4
        for block in range(depth):
            specs.append(LayerSpec(f"layer{stage}.{block}", f"layer{stage}.{block}", "conv", channels, (side, side), position,
                                   pre_activation_module=f"layer{stage}.{block}.act3"))
            position += 1
        specs.append(LayerSpec(f"layer{stage}", f"layer{stage}", "conv", channels, (side, side), position,
                               pre_activation_module=f"layer{stage}.{depth - 1}.act3"))
        position += 1
    specs.append(LayerSpec("attnpool", "attnpool", "pooled", embed_dim, None, position))
    return specs


def _vit_layers(vision_cfg: dict) -> list[LayerSpec]:
    width = vision_cfg.get("width", 768)
    depth = vision_cfg["layers"]
    patch = vision_cfg["patch_size"]
    size = _image_size(vision_cfg)
    hidden = int(width * vision_cfg.get("mlp_ratio", 4.0))
    grid = (size // patch, size // patch)
    specs: list[LayerSpec] = []
    position = 0
    for block in range(depth):
        prefix = f"transformer.resblocks.{block}"
        # MLP neurons are read after the GELU: the nonlinearity is what makes them units.
        specs.append(LayerSpec(f"{prefix}.mlp", f"{prefix}.mlp.gelu", "tokens", hidden, grid, position))
        position += 1
        specs.append(LayerSpec(prefix, prefix, "tokens", width, grid, position))
        position += 1
    return specs


@lru_cache(maxsize=None)
def architecture(name: str) -> ArchitectureSpec:
    config = open_clip.get_model_config(name)
    if config is None:
        raise UnknownArchitectureError(
            f"unknown open_clip architecture '{name}'; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    vision_cfg = config["vision_cfg"]
    embed_dim = int(config["embed_dim"])
    if "timm_model_name" in vision_cfg:
        raise UnknownArchitectureError(f"'{name}' uses a timm image tower, which is not supported yet")
    if isinstance(vision_cfg.get("layers"), (list, tuple)):
        family, layers = "resnet", _resnet_layers(vision_cfg, embed_dim)
    else:
        family, layers = "vit", _vit_layers(vision_cfg)
    return ArchitectureSpec(name, family, _image_size(vision_cfg), embed_dim, tuple(layers))


def architecture_table() -> list[dict]:
    """One row per supported architecture, for the CLI and the docs."""
    rows = []
    for name in SUPPORTED_ARCHITECTURES:
        spec = architecture(name)
        rows.append(
            {
                "architecture": name,
                "family": spec.family,
                "image_size": spec.image_size,
                "layers": [
                    {"name": layer.name, "kind": layer.kind, "units": layer.units, "spatial": layer.spatial}
                    for layer in spec.layers
                ],
            }
        )
    return rows
