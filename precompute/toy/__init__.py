"""Our embedded toy CLIP models: open_clip configs, a word-level tokenizer, training, eval.

The configs are registered with open_clip so the toy architectures are built by open_clip
itself and loaded through the same registry path as any other checkpoint.
"""

from pathlib import Path

TOY_DIR = Path(__file__).resolve().parent
CONFIG_DIR = TOY_DIR / "configs"
CHECKPOINT_DIR = TOY_DIR / "checkpoints"
TOY_ARCHITECTURES = {"rn": "toy-rn", "vit": "toy-vit"}

_registered = False


def register_toy_configs() -> None:
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    _registered = True


def embedded_checkpoint(arch: str) -> Path:
    """The shipped checkpoint of a toy architecture ('toy-rn' or 'toy-vit')."""
    return CHECKPOINT_DIR / f"{arch}.safetensors"
