"""Dockerfiles and compose, checked without a Docker engine.

hadolint lints each Dockerfile; the compose file and the images must start the
very entrypoints the integration tests exercise, with settings the server
actually understands.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))


def _instruction(dockerfile: Path, name: str) -> list[str]:
    """The JSON-array argument of the last ``name`` instruction (ENTRYPOINT, CMD)."""
    matches = re.findall(rf"^{name}\s+(\[.*\])\s*$", dockerfile.read_text(), flags=re.M)
    assert matches, f"{dockerfile.name} has no exec-form {name}"
    return yaml.safe_load(matches[-1])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    hadolint = str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_server_image_runs_the_tested_entrypoint():
    dockerfile = ROOT / "docker" / "Dockerfile.server"
    command = _instruction(dockerfile, "ENTRYPOINT") + _instruction(dockerfile, "CMD")
    # tests/service/test_serve_process.py starts exactly this command.
    assert command == ["secdood-server", "serve"]
    text = dockerfile.read_text()
    assert "-c constraints.txt" in text  # the same pins as `make`
    assert "SECDOOD_HOST=0.0.0.0" in text  # reachable from other containers


def test_compose_services_and_settings():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"server", "device-fog", "device-noise"}
    assert services["server"]["command"] == ["serve"]
    known = {f"SECDOOD_{name.upper()}" for name in Settings.model_fields}
    unknown = set(services["server"]["environment"]) - known
    assert not unknown, f"server environment has settings the server ignores: {unknown}"
    corruptions = {
        services[d]["environment"]["DEVICE_CORRUPTION"] for d in services if d != "server"
    }
    assert len(corruptions) == 2  # two devices, two different camera shifts
    for name in ("device-fog", "device-noise"):
        assert services[name]["depends_on"]["server"]["condition"] == "service_healthy"
    # Every file a Dockerfile copies exists in the repository.
    for dockerfile in DOCKERFILES:
        for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), re.M):
            for part in source.split():
                assert (ROOT / part).exists(), f"{dockerfile.name} copies missing {part}"


def test_device_entrypoint_uses_existing_cli_commands():
    from device_client.cli import build_parser

    script = (ROOT / "docker" / "device-entrypoint.sh").read_text()
    used = set(re.findall(r"secdood-device (\S+)", script))
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)  # noqa: SLF001
    assert used and used <= commands


def test_compose_ships_no_keys_and_publishes_on_loopback_by_default():
    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text
    compose = yaml.safe_load(text)
    server_env = compose["services"]["server"]["environment"]
    for key in ("SECDOOD_ENROLLMENT_KEY", "SECDOOD_SCORING_API_KEY", "SECDOOD_ADMIN_API_KEY"):
        # ${VAR:?message}: compose stops with the message when the key is unset.
        assert re.fullmatch(rf"\$\{{{key}:\?.*make compose-env.*\}}", server_env[key])
    for port in compose["services"]["server"]["ports"]:
        assert port.startswith("${SECDOOD_PUBLISH_ADDRESS:-127.0.0.1}:"), port


def env_keys(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "_KEY=" in line)


def test_compose_env_writes_random_private_keys_once(tmp_path):
    env_file = tmp_path / ".env"
    script = str(ROOT / "scripts" / "compose-env")
    subprocess.run([script, str(env_file)], check=True, capture_output=True)
    first = env_file.read_text()
    assert env_file.stat().st_mode & 0o777 == 0o600
    keys = env_keys(first)
    assert len(keys) == 3 and len(set(keys.values())) == 3
    assert all(len(value) >= 40 for value in keys.values())
    subprocess.run([script, str(env_file)], check=True, capture_output=True)
    assert env_file.read_text() == first  # never overwritten
    other = tmp_path / "other.env"
    subprocess.run([script, str(other)], check=True, capture_output=True)
    assert not set(keys.values()) & set(env_keys(other.read_text()).values())


def test_build_context_leaves_out_secrets_and_environments():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".secdood", ".env", "bench/results"} <= ignored


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_default_to_a_registry_base_and_take_a_local_one(dockerfile):
    text = dockerfile.read_text()
    assert text.count("ARG BASE_IMAGE=python:3.11-slim") == 1
    assert all(line == "FROM ${BASE_IMAGE}" or line.startswith("FROM ${BASE_IMAGE} AS ")
               for line in re.findall(r"^FROM .*$", text, re.M))  # fmt: skip
    assert "--find-links /wheels $PIP_SOURCE" in text


KEYS = ("SECDOOD_ENROLLMENT_KEY", "SECDOOD_SCORING_API_KEY", "SECDOOD_ADMIN_API_KEY")


@pytest.mark.parametrize("missing", KEYS)
def test_compose_without_a_key_refuses_and_names_it(tmp_path, missing):
    # `docker-compose config` interpolates like `up` and needs no Docker engine.
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (make test-docker installs it)")
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{key}=k-{index}\n" for index, key in enumerate(KEYS)
                                if key != missing))  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SECDOOD_")}
    result = subprocess.run(
        [compose, "--project-directory", str(ROOT), "--file", str(ROOT / "docker-compose.yml"),
         "--env-file", str(env_file), "config"],
        capture_output=True, text=True, env=environ, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert missing in result.stderr and "make compose-env" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "set SECDOOD_SERVER=host:port"),
        ({"SECDOOD_SERVER": "server:50051"}, "set SECDOOD_ENROLLMENT_KEY"),
    ],
    ids=["no-server", "no-enrolment-key"],
)
def test_device_entrypoint_without_settings_names_what_is_missing(tmp_path, settings, message):
    state = tmp_path / "device"
    state.mkdir()
    environ = {"PATH": os.environ["PATH"], "SECDOOD_DEVICE_DIR": str(state), **settings}
    result = subprocess.run(
        ["sh", str(ROOT / "docker" / "device-entrypoint.sh")],
        capture_output=True, text=True, env=environ, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert list(state.iterdir()) == []  # nothing written before the check
