"""Reading and writing checkpoint files without ever running pickled code.

safetensors files are read directly; anything else goes through `torch.load(weights_only=True)`,
which refuses arbitrary objects. Every failure becomes a one-line CheckpointError.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from precompute.errors import CheckpointError

# Keys in safetensors metadata that let a checkpoint describe itself (our toy models use
# them to carry their open_clip config and tokenizer vocabulary).
META_CONFIG = "open_clip_config"
META_VOCAB = "tokenizer_vocab"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    # Training scripts (open_clip's included) save {"state_dict": ..., "epoch": ...}.
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    # DistributedDataParallel prefixes every key with "module.".
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path} is not a readable safetensors file ({_first_line(error)})") from None
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols before failing
            warnings.simplefilter("ignore")
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found:
            raise CheckpointError(f"{path} holds objects other than tensors ({found.group(1)}); refusing to unpickle it") from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt pickle data)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(error)})") from None
    return _unwrap(state, path)


def read_metadata(path: str | Path) -> dict[str, str]:
    """safetensors metadata (empty for other formats or files without any)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({_first_line(error)})") from None


def write_checkpoint(model: torch.nn.Module, path: str | Path, metadata: dict[str, object] | None = None) -> Path:
    """Save a model's weights as safetensors; non-string metadata values are stored as JSON.

    The file appears whole or not at all (an interrupted save leaves no half checkpoint), with
    the permissions the umask gives: safetensors' own writer makes it private to its owner,
    which a server running as another user could not read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    text_meta = {
        key: value if isinstance(value, str) else json.dumps(value) for key, value in (metadata or {}).items()
    }
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(save(state, metadata=text_meta))
    partial.replace(path)
    return path


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensor shapes that do not fit the architecture
        raise CheckpointError(f"{path} does not match architecture {arch}: {_first_line(error)}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[0]})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[0]})")
    if problems:
        raise CheckpointError(f"{path} does not match architecture {arch}: {'; '.join(problems)}")


def check_embedded_config(path: Path, arch: str, config: dict) -> None:
    """A checkpoint that carries its open_clip config must have been trained as `arch` is built
    now (`config`): settings that hold no weights, such as how the image tower pools, would
    otherwise change the model without a word."""
    embedded = read_metadata(path).get(META_CONFIG)
    if not embedded:
        return
    try:
        trained = json.loads(embedded)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} carries an unreadable {META_CONFIG} entry") from None
    difference = _first_difference(trained, config)
    if difference:
        key, theirs, ours = difference
        raise CheckpointError(f"{path} was trained with another {arch} config: {key} is {theirs!r} there, "
                              f"{ours!r} in {arch} now")


def _first_difference(trained: object, current: object, key: str = "") -> tuple[str, object, object] | None:
    if isinstance(trained, dict) and isinstance(current, dict):
        for name in sorted(set(trained) | set(current)):
            found = _first_difference(trained.get(name), current.get(name), f"{key}.{name}" if key else name)
            if found:
                return found
        return None
    # JSON has no tuples: compare sequences as lists.
    normalise = (lambda value: list(value) if isinstance(value, tuple) else value)
    return None if normalise(trained) == normalise(current) else (key, trained, current)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
