"""docker-compose.yml stays consistent with what the rest of the suite exercises."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"

# `microscope` commands the compose file may run. Each must be exercised by a test elsewhere
# in the suite (CLI tests); add a command here only together with its test.
EXERCISED_COMMANDS = {
    ("microscope", "db", "upgrade"),
    ("microscope", "serve"),
    ("microscope", "demo", "--no-serve"),
}


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


_CONTROL = {"&&", "||", ";", "|", "&"}


def _shell_commands(script: str) -> list[list[str]]:
    """Split a shell script into simple commands, respecting quotes."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in _CONTROL:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _commands(value: Any) -> list[list[str]]:
    """Every command a service field can run: exec lists, shell strings, `sh -c "a && b"`."""
    if value is None:
        return []
    if isinstance(value, str):
        return _shell_commands(value)
    words = [str(v) for v in value]
    if words[:1] == ["CMD-SHELL"]:
        return _shell_commands(" ".join(words[1:]))
    if words[:1] == ["CMD"]:
        words = words[1:]
    if len(words) >= 3 and words[0] in ("sh", "bash", "/bin/sh", "/bin/bash") and words[1] == "-c":
        return _shell_commands(words[2])
    return [words]


def _microscope_commands(compose: dict[str, Any]) -> list[list[str]]:
    found = []
    for service in compose["services"].values():
        commands = _commands(service.get("command")) + _commands(service.get("entrypoint"))
        commands += _commands((service.get("healthcheck") or {}).get("test"))
        for words in commands:
            if words[:1] == ["exec"]:
                words = words[1:]
            if words[:1] == ["microscope"]:
                found.append(words)
    return found


def test_services_exist() -> None:
    assert {"postgres", "web", "worker"} <= set(_compose()["services"])


def test_postgres_has_healthcheck_and_web_waits_for_it() -> None:
    services = _compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])
    for name in ("web", "worker"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_worker_reserves_a_gpu() -> None:
    devices = _compose()["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and d["count"] == 1 and "gpu" in d["capabilities"] for d in devices)


def test_app_services_are_configured_only_through_microscope_env() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        env = service.get("environment") or {}
        keys = [e.split("=", 1)[0] for e in env] if isinstance(env, list) else list(env)
        allowed = ("MICROSCOPE_", "POSTGRES_") if service.get("image", "").startswith("postgres") else ("MICROSCOPE_",)
        assert keys, f"{name} sets no environment"
        assert all(k.startswith(allowed) for k in keys), f"{name}: {keys}"
        assert "env_file" not in service
    for name in ("web", "worker"):
        env = services[name]["environment"]
        assert env["MICROSCOPE_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "MICROSCOPE_BLOB_URL" in env and "MICROSCOPE_DEVICE" in env
    assert services["worker"]["environment"]["MICROSCOPE_DEVICE"] == "cuda"


def test_every_microscope_command_is_exercised() -> None:
    commands = _microscope_commands(_compose())
    assert commands, "no microscope commands found; did the parser break?"
    for words in commands:
        assert any(tuple(words[: len(c)]) == c for c in EXERCISED_COMMANDS), f"not exercised by the suite: {shlex.join(words)}"
    # And the parser did see the commands the services are meant to run.
    assert ["microscope", "db", "upgrade"] in commands
    assert ["microscope", "demo", "--no-serve"] in commands
    assert any(w[:2] == ["microscope", "serve"] for w in commands)
