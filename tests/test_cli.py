"""The `microscope` command as a user runs it: a real process, real databases, real files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

COMMANDS = [
    [], ["db"], ["db", "upgrade"], ["db", "downgrade"], ["db", "current"], ["models"], ["models", "arches"],
    ["models", "register"], ["models", "list"], ["models", "layers"], ["models", "make-checkpoint"],
    ["capture"], ["toy"], ["toy", "world"], ["toy", "train"], ["toy", "eval"], ["serve"], ["demo"],
]


def microscope(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    env["MICROSCOPE_DATA_DIR"] = str(tmp_path / "data")
    return env


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_every_command_has_help(command, cli_env):
    result = microscope(*command, "--help", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_db_upgrade_downgrade_upgrade(database_url, cli_env):
    from store import migrations

    cli_env["MICROSCOPE_DATABASE_URL"] = database_url
    head = migrations.head()
    for args, expected in ((["upgrade"], head), (["downgrade", "base"], "base"), (["upgrade"], head)):
        result = microscope("db", *args, env=cli_env)
        assert result.returncode == 0, result.stderr
        assert microscope("db", "current", env=cli_env).stdout.strip() == expected


def test_register_list_and_layers(migrated_url, cli_env, tmp_path):
    cli_env["MICROSCOPE_DATABASE_URL"] = migrated_url
    checkpoint = tmp_path / "vit.safetensors"
    assert microscope("models", "make-checkpoint", "--arch", "ViT-B-32", "--out", str(checkpoint), env=cli_env).returncode == 0
    result = microscope("models", "register", "my-vit", "--arch", "ViT-B-32", "--checkpoint", str(checkpoint), env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "24 layers" in result.stdout
    again = microscope("models", "register", "my-vit", "--arch", "ViT-B-32", "--checkpoint", str(checkpoint), env=cli_env)
    assert again.returncode == 0, again.stderr
    listed = microscope("models", "list", env=cli_env).stdout.splitlines()
    assert len([line for line in listed if line.startswith("my-vit ")]) == 1
    layers = microscope("models", "layers", "my-vit", env=cli_env).stdout
    assert "transformer.resblocks.11.mlp" in layers and "3072 units" in layers and "7x7" in layers


def test_user_errors_are_one_line(migrated_url, cli_env, tmp_path):
    cli_env["MICROSCOPE_DATABASE_URL"] = migrated_url
    assert "not registered" in one_line_error(microscope("capture", "nope", "--images", str(tmp_path), "--layer", "layer4",
                                                         "--out", str(tmp_path / "o.npz"), env=cli_env))
    assert "supported" in one_line_error(microscope("models", "register", "x", "--arch", "RN50x5", "--random", env=cli_env))
    assert "exactly one" in one_line_error(microscope("models", "register", "x", "--arch", "RN50", env=cli_env))
    assert "must be" in one_line_error(microscope("models", "register", "Bad Id", "--arch", "RN50", "--random", env=cli_env))


def test_capture_skips_and_counts_corrupt_images(migrated_url, cli_env, tmp_path):
    import numpy as np
    from PIL import Image

    cli_env["MICROSCOPE_DATABASE_URL"] = migrated_url
    folder = tmp_path / "images" / "nested"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "2b-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert microscope("models", "register", "rn", "--arch", "toy-rn", "--random", env=cli_env).returncode == 0
    bad_layer = microscope("capture", "rn", "--images", str(tmp_path / "images"), "--layer", "layer9",
                           "--out", str(tmp_path / "a.npz"), env=cli_env)
    assert "valid layers" in one_line_error(bad_layer)
    out = tmp_path / "acts.npz"
    result = microscope("capture", "rn", "--images", str(tmp_path / "images"), "--layer", "layer4", "--layer", "attnpool",
                        "--out", str(out), env=cli_env)
    assert result.returncode == 0, result.stderr
    assert '"images": 5' in result.stdout and '"skipped": 1' in result.stdout
    arrays = np.load(out)
    assert arrays["layer4"].shape == (5, 768) and arrays["attnpool"].shape == (5, 128)
    assert "2b-corrupt.png" not in set(arrays["files"])
    missing = microscope("capture", "rn", "--images", str(tmp_path / "nowhere"), "--layer", "layer4",
                         "--out", str(out), env=cli_env)
    assert "does not exist" in one_line_error(missing)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_answers_healthz(migrated_url, cli_env):
    cli_env["MICROSCOPE_DATABASE_URL"] = migrated_url
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port)], env=cli_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stdout.read()
                assert time.time() < deadline, "server did not start"
                time.sleep(0.3)
        assert response.status_code == 200 and response.json()["status"] == "ok"
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--arch", "cnn"], "--arch must be one of"),
        (["--arch", "rn", "--steps", "0"], "--steps must be at least 1"),
        (["--arch", "rn", "--threads", "-1"], "--threads must be 0"),
        (["--arch", "rn", "--device", "tpu9"], "is not a torch device"),
        (["--arch", "vit", "--teacher", "clip"], "--teacher must be one of"),
        (["--arch", "vit", "--teacher", "vit"], "--teacher must be another model"),
        (["--arch", "rn", "--device", "cuda"] if not __import__("torch").cuda.is_available()
         else ["--arch", "rn", "--device", "meta"], "--device"),
    ],
)
def test_toy_train_rejects_bad_options_before_any_work(args, reason, cli_env, tmp_path):
    result = microscope("toy", "train", *args, "--out", str(tmp_path / "never.safetensors"), env=cli_env)
    assert reason in one_line_error(result)
    assert not (tmp_path / "never.safetensors").exists()
