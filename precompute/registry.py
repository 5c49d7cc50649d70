"""Loading open_clip models under a user-chosen id, and recording what was loaded.

Three sources, one code path after the weights are read:
  - an open_clip name + pretrained tag (downloads through open_clip; needs internet),
  - an open_clip name + a local checkpoint file (safetensors or a weights-only torch file),
  - our embedded toy models, which are simply local checkpoints shipped in the package.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch

from precompute.architectures import ArchitectureSpec, architecture
from precompute.checkpoints import (
    META_VOCAB,
    check_embedded_config,
    load_into,
    read_metadata,
    read_state_dict,
    sha256_of,
)
from precompute.errors import CheckpointError, MicroscopeError
from precompute.toy import TOY_ARCHITECTURES, embedded_checkpoint

MODEL_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass
class LoadedModel:
    model_id: str
    spec: ArchitectureSpec
    model: torch.nn.Module
    preprocess: Callable  # PIL image -> normalised tensor, open_clip's eval transform
    tokenizer: Callable  # list[str] -> LongTensor of token ids
    source: str  # "pretrained" | "checkpoint" | "embedded"
    pretrained_tag: str | None = None
    checkpoint_path: str | None = None
    checkpoint_sha256: str | None = None
    preprocess_cfg: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def record(self) -> dict:
        """What was loaded, in the shape of the store's `models` table."""
        return {
            "id": self.model_id,
            "arch": self.spec.name,
            "source": self.source,
            "pretrained_tag": self.pretrained_tag,
            "checkpoint_path": self.checkpoint_path,
            "checkpoint_sha256": self.checkpoint_sha256,
            "image_size": self.spec.image_size,
            "preprocess": self.preprocess_cfg,
        }

    def layer_records(self) -> list[dict]:
        return [
            {
                "name": layer.name,
                "kind": layer.kind,
                "units": layer.units,
                "spatial": layer.spatial,
                "has_class_token": layer.has_class_token,
                "position": layer.position,
            }
            for layer in self.spec.layers
        ]


def validate_model_id(model_id: str) -> str:
    if not MODEL_ID_PATTERN.match(model_id):
        raise MicroscopeError(
            f"model id '{model_id}' must be 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return model_id


def _preprocess_for(model: torch.nn.Module) -> tuple[Callable, dict]:
    cfg = open_clip.transform.PreprocessCfg(**model.visual.preprocess_cfg)
    transform = open_clip.transform.image_transform_v2(cfg, is_train=False)
    as_dict = {
        "size": cfg.size,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "interpolation": cfg.interpolation,
        "resize_mode": cfg.resize_mode,
    }
    return transform, as_dict


def _tokenizer_for(arch: str, checkpoint: Path | None) -> Callable:
    config = open_clip.get_model_config(arch)
    vocab_json = read_metadata(checkpoint).get(META_VOCAB) if checkpoint else None
    if vocab_json:
        from precompute.toy.tokenizer import WordTokenizer

        text_cfg = config["text_cfg"]
        return WordTokenizer(json.loads(vocab_json), text_cfg["vocab_size"], text_cfg["context_length"])
    if arch in TOY_ARCHITECTURES.values():
        # A toy model without a vocabulary can still be probed visually, not through text.
        def no_text(_texts):
            raise MicroscopeError(f"this {arch} checkpoint carries no tokenizer vocabulary")

        return no_text
    return open_clip.get_tokenizer(arch)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    model_id: str,
    arch: str,
    *,
    pretrained: str | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = "cpu",
    source: str | None = None,
) -> LoadedModel:
    """Build `arch` with open_clip and fill it from a pretrained tag or a checkpoint file.

    With neither, the model keeps open_clip's random initialisation (useful for shape and
    speed work, meaningless for semantics).
    """
    validate_model_id(model_id)
    spec = architecture(arch)
    if pretrained and checkpoint:
        raise MicroscopeError("give either a pretrained tag or a checkpoint file, not both")
    target = _resolve_device(device)
    checkpoint_path = Path(checkpoint).expanduser().resolve() if checkpoint else None
    if pretrained:
        try:
            model = open_clip.create_model(arch, pretrained=pretrained, weights_only=True)
        except RuntimeError as error:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
            raise CheckpointError(
                f"could not load {arch} pretrained '{pretrained}' (known tags: {tags}): {str(error).splitlines()[0]}"
            ) from None
        kind = "pretrained"
    else:
        state = read_state_dict(checkpoint_path) if checkpoint_path else None
        if checkpoint_path:
            check_embedded_config(checkpoint_path, arch, open_clip.get_model_config(arch))
        # Quiet open_clip's "no pretrained weights loaded" warning: we load them next.
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
        if state is None:
            torch.manual_seed(0)  # random weights are reproducible when seeded before creation
        model = open_clip.create_model(arch, pretrained=None)
        if state is not None:
            load_into(model, state, checkpoint_path, arch)
        kind = "checkpoint" if checkpoint_path else "random"
    model.eval().to(target)
    model.requires_grad_(False)
    preprocess, preprocess_cfg = _preprocess_for(model)
    return LoadedModel(
        model_id=model_id,
        spec=spec,
        model=model,
        preprocess=preprocess,
        tokenizer=_tokenizer_for(arch, checkpoint_path),
        source=source or kind,
        pretrained_tag=pretrained,
        checkpoint_path=str(checkpoint_path) if checkpoint_path else None,
        checkpoint_sha256=sha256_of(checkpoint_path) if checkpoint_path else None,
        preprocess_cfg=preprocess_cfg,
    )


def load_embedded(arch: str, *, model_id: str | None = None, device: str | torch.device | None = "cpu") -> LoadedModel:
    """Load one of the toy models shipped inside the package ('toy-rn' or 'toy-vit')."""
    if arch not in TOY_ARCHITECTURES.values():
        raise MicroscopeError(f"no embedded model '{arch}'; embedded models: {', '.join(TOY_ARCHITECTURES.values())}")
    path = embedded_checkpoint(arch)
    if not path.is_file():
        raise CheckpointError(f"the embedded checkpoint {path} is missing; train it with `microscope toy train`")
    return load_model(model_id or arch, arch, checkpoint=path, device=device, source="embedded")
