import open_clip
import pytest
import torch

from precompute.checkpoints import write_checkpoint


@pytest.fixture(scope="session")
def random_checkpoints(tmp_path_factory):
    """Seeded random-initialised checkpoints of the real architectures, saved to files."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for arch in ("RN50x4", "ViT-B-32"):
        torch.manual_seed(0)
        paths[arch] = write_checkpoint(open_clip.create_model(arch, pretrained=None), folder / f"{arch}.safetensors")
    return paths


@pytest.fixture(scope="session")
def toy_rn():
    from precompute.registry import load_embedded

    return load_embedded("toy-rn", device="cpu")


@pytest.fixture(scope="session")
def toy_vit():
    from precompute.registry import load_embedded

    return load_embedded("toy-vit", device="cpu")
