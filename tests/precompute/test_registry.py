import pickle
import subprocess
import sys

import open_clip
import pytest
import torch

from precompute.architectures import SUPPORTED_ARCHITECTURES, architecture
from precompute.checkpoints import read_state_dict
from precompute.errors import CheckpointError, UnknownArchitectureError, UnknownLayerError
from precompute.registry import load_model


def test_table_covers_the_documented_towers():
    rn = architecture("RN50x4")
    assert rn.family == "resnet" and rn.image_size == 288
    assert rn.layer("layer4").units == 2560 and rn.layer("layer4").spatial == (9, 9)
    assert rn.layer("layer4.5").units == 2560
    assert rn.layer("layer1").units == 320 and rn.layer("layer1").spatial == (72, 72)
    assert rn.layer("attnpool").units == 640 and rn.layer("attnpool").spatial is None
    vit = architecture("ViT-B-32")
    mlp = vit.layer("transformer.resblocks.9.mlp")
    assert (mlp.units, mlp.spatial, mlp.has_class_token) == (3072, (7, 7), True)
    assert vit.layer("transformer.resblocks.11").units == 768
    assert architecture("ViT-L-14").layer("transformer.resblocks.23.mlp").units == 4096
    assert architecture("ViT-B-16").final_layer.spatial == (14, 14)
    for name in SUPPORTED_ARCHITECTURES:
        spec = architecture(name)
        assert [layer.position for layer in spec.layers] == list(range(len(spec.layers)))


def test_unknown_names_say_what_is_valid():
    with pytest.raises(UnknownLayerError, match="valid layers: .*layer4"):
        architecture("RN50x4").layer("layer5")
    with pytest.raises(UnknownArchitectureError, match="supported: .*ViT-B-32"):
        architecture("RN50x5")


@pytest.mark.parametrize("arch", ["RN50x4", "ViT-B-32"])
def test_checkpoint_loads_by_path_with_the_same_weights(random_checkpoints, arch):
    loaded = load_model(arch.lower(), arch, checkpoint=random_checkpoints[arch])
    assert loaded.source == "checkpoint" and len(loaded.checkpoint_sha256) == 64
    assert loaded.record()["image_size"] == architecture(arch).image_size
    state = read_state_dict(random_checkpoints[arch])
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not loaded.model.training


def test_written_checkpoints_are_readable_by_others_and_never_partial(random_checkpoints):
    """A checkpoint is written for a server (often another user) to load: it takes the umask's
    permissions, not safetensors' owner-only ones, and no partial file is left beside it."""
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    path = random_checkpoints["RN50x4"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(path.name)] == [path.name]


def test_torch_checkpoints_with_wrappers_load(tmp_path):
    torch.manual_seed(3)
    model = open_clip.create_model("toy-rn", pretrained=None)
    path = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    loaded = load_model("wrapped", "toy-rn", checkpoint=path)
    assert torch.equal(loaded.model.visual.conv1.weight, model.visual.conv1.weight)


class _Exploit:
    def __reduce__(self):
        return (open, ("/tmp/clip-microscope-pickle-ran", "w"))


def test_pickled_code_is_never_run(tmp_path):
    import os

    marker = "/tmp/clip-microscope-pickle-ran"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit()}, path, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_model("evil", "toy-rn", checkpoint=path)
    assert not os.path.exists(marker)


def test_corrupt_and_mismatched_checkpoints_fail_clearly(tmp_path, random_checkpoints):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(random_checkpoints["ViT-B-32"].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model("c", "ViT-B-32", checkpoint=corrupt)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model("g", "ViT-B-32", checkpoint=garbage)
    with pytest.raises(CheckpointError, match="does not match architecture RN50x4"):
        load_model("m", "RN50x4", checkpoint=random_checkpoints["ViT-B-32"])
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("m", "RN50x4", checkpoint=tmp_path / "missing.pt")


def test_cli_errors_are_one_line_without_traceback(tmp_path, random_checkpoints):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(pickle.dumps([1, 2, 3])[:7])
    env = {"MICROSCOPE_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "models", "register", "bad", "--arch", "RN50x4", "--checkpoint", str(corrupt)],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "corrupt.pt" in lines[0]


def test_a_checkpoint_trained_with_another_config_is_refused(tmp_path):
    """Pooling holds no weights: a toy-vit trained with class-token pooling loads into today's
    mean-pooling toy-vit without a missing key, so only its embedded config can tell."""
    from precompute.checkpoints import META_CONFIG, write_checkpoint
    from precompute.toy import register_toy_configs

    register_toy_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("toy-vit", pretrained=None)
    config = open_clip.get_model_config("toy-vit")
    same = write_checkpoint(model, tmp_path / "same.safetensors", metadata={META_CONFIG: config})
    assert load_model("same", "toy-vit", checkpoint=same).model.visual.pool_type == "avg"
    older = {**config, "vision_cfg": {**config["vision_cfg"], "pool_type": "tok"}}
    path = write_checkpoint(model, tmp_path / "older.safetensors", metadata={META_CONFIG: older})
    with pytest.raises(CheckpointError, match=r"another toy-vit config: vision_cfg.pool_type is 'tok' there, 'avg'"):
        load_model("older", "toy-vit", checkpoint=path)
