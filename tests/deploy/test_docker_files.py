"""Dockerfiles and compose, checked without a Docker engine.

hadolint lints each Dockerfile; the compose file and the images must start the
very entrypoints the integration tests exercise, with settings the server
actually understands.
"""

from __future__ import annotations

import re
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
