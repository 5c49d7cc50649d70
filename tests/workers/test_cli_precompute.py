"""The precompute and datasets commands as a user runs them: help, and bad input answered
with one line and a non-zero exit, before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from store import migrations
from tests.workers.precompute_helpers import SINGLE_THREAD_ENV, register_random

ROOT = Path(__file__).resolve().parents[2]


def microscope(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    env["MICROSCOPE_DATA_DIR"] = str(tmp_path / "data")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(SINGLE_THREAD_ENV)
    return env


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["datasets"], ["datasets", "register"], ["datasets", "list"], ["precompute"],
                                     ["precompute", "examples"], ["precompute", "words"]], ids=" ".join)
def test_help(command, cli_env):
    result = microscope(*command, "--help", env=cli_env)
    assert result.returncode == 0 and "Usage" in result.stdout, result.stderr


@pytest.mark.slow
def test_bad_input_gives_one_line_and_exit_2(cli_env, tmp_path):
    url = f"sqlite:///{tmp_path / 'data' / 'microscope.db'}"
    migrations.upgrade(url)
    register_random(url, "toy-rn", "toy-rn")
    (tmp_path / "empty").mkdir()
    assert "does not exist" in one_line_error(microscope("datasets", "register", "d", "--path", str(tmp_path / "nope"), env=cli_env))
    assert "holds no JPEG, PNG or WebP" in one_line_error(microscope("datasets", "register", "d", "--path", str(tmp_path / "empty"), env=cli_env))
    assert "exactly one of" in one_line_error(microscope("datasets", "register", "d", "--synthetic", "3", "--url", "memory://x", env=cli_env))
    ok = microscope("datasets", "register", "world", "--synthetic", "5", env=cli_env)
    assert ok.returncode == 0 and "registered dataset world: 5 images" in ok.stdout, ok.stderr
    assert "world" in microscope("datasets", "list", env=cli_env).stdout
    assert "model 'nope' is not registered" in one_line_error(
        microscope("precompute", "examples", "--model", "nope", "--layer", "layer4", "--dataset", "world", env=cli_env))
    assert "no layer 'layer9'" in one_line_error(
        microscope("precompute", "examples", "--model", "toy-rn", "--layer", "layer9", "--dataset", "world", env=cli_env))
    assert "dataset 'other' is not registered" in one_line_error(
        microscope("precompute", "examples", "--model", "toy-rn", "--layer", "layer4", "--dataset", "other", env=cli_env))
    assert "no layer 'layer9'" in one_line_error(
        microscope("precompute", "words", "--model", "toy-rn", "--layer", "layer9", "--words", "5", env=cli_env))
    assert "does not exist" in one_line_error(
        microscope("precompute", "words", "--model", "toy-rn", "--layer", "layer4", "--word-file", str(tmp_path / "w.txt"), env=cli_env))
    assert "--engine must be one of local, ray" in one_line_error(
        microscope("precompute", "words", "--model", "toy-rn", "--layer", "layer4", "--words", "5", "--engine", "spark", env=cli_env))
