"""The real deployment: both images under docker-compose, from first start to restart.

Needs a Docker engine, docker-compose and the images that ``make docker`` builds;
``make test-docker`` does all of that and then runs this file. It proves, in order:
compose refuses to start without keys; a small model is trained with the image's CLI and
the server turns healthy; two device containers enrol, download, personalise their head with
CKKS-encrypted channels and score with it; REST scoring works from the host; bad device
settings fail with one clear line; and after ``docker-compose down`` and ``up`` on the same
volumes nothing is lost (devices, models, the devices' CKKS contexts, their enrolment).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import free_loopback_port, wait_until

from shared.model_names import BASE_MODEL, HYPERNETWORK

pytestmark = [pytest.mark.slow, pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[2]
DEVICES = ("device-fog", "device-noise")
DEVICE_NAMES = {"cam-fog", "cam-noise"}
FIRST_START_TIMEOUT_S = 600
DEVICE_TIMEOUT_S = 900
SMALL_DATA = {"train_per_class": 60, "val_per_class": 20, "test_per_class": 10,
              "ood_per_action": 10, "far_count": 40}  # fmt: skip
SMALL_TRAINING = ["--set", "epochs=2", "--set", f"data={json.dumps(SMALL_DATA)}"]
# Without a HyperNetwork the server trains the default one after it turns healthy and
# devices' personalize is refused (NOT_FOUND) until it lands; a small one first.
SMALL_HYPERNETWORK = ["--method", HYPERNETWORK, "--set", "devices=8", "--set",
                      "classic_devices=4", "--set", "clips_per_device=32", "--set",
                      "val_devices=0", "--set", "steps=200"]  # fmt: skip


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.startswith("#")}


class ComposeStack:
    """``docker-compose`` for one throw-away project with its own env file and ports."""

    def __init__(self, work_dir: Path) -> None:
        self.project = f"secdood-test-{os.getpid()}"
        self.env_file = work_dir / ".env"
        subprocess.run([str(ROOT / "scripts" / "compose-env"), str(self.env_file)], check=True)
        self.keys = read_env_file(self.env_file)
        self.rest_port, self.grpc_port = free_loopback_port(), free_loopback_port()
        self.url = f"http://127.0.0.1:{self.rest_port}"
        # Keys come only from the env file, never from this process's environment.
        self.environ = {k: v for k, v in os.environ.items() if not k.startswith("SECDOOD_")}
        self.environ |= {
            "SECDOOD_REST_PUBLISH_PORT": str(self.rest_port),
            "SECDOOD_GRPC_PUBLISH_PORT": str(self.grpc_port),
        }

    def command(self, *args: str, env_file: Path | None = None) -> list[str]:
        return [
            shutil.which("docker-compose") or "docker-compose",
            "--project-name",
            self.project,
            "--project-directory",
            str(ROOT),
            "--file",
            str(ROOT / "docker-compose.yml"),
            "--env-file",
            str(env_file or self.env_file),
            *args,
        ]

    def __call__(
        self, *args: str, check: bool = True, timeout: float = DEVICE_TIMEOUT_S, **kwargs: Any
    ) -> str:
        result = subprocess.run(
            self.command(*args, **kwargs),
            env=self.environ,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)}: {result.stderr}")
        return result.stdout + result.stderr

    def container(self, service: str) -> str:
        return self("ps", "-q", service).strip().splitlines()[0]

    def health(self, service: str) -> str:
        return docker("inspect", "--format", "{{.State.Health.Status}}", self.container(service))

    def wait_healthy(self, timeout_s: float) -> None:
        def healthy() -> bool:
            status = self.health("server")
            assert status != "unhealthy", self("logs", "--tail", "40", "server")
            return status == "healthy"

        wait_until(healthy, timeout=timeout_s, interval=5, what="the server to report healthy")

    def run_devices(self) -> dict[str, str]:
        """Start both device containers, wait for them to finish; their logs by service."""
        self("up", "-d", "--no-build", *DEVICES)
        logs = {}
        for service in DEVICES:
            container = self.container(service)
            exit_code = docker("wait", container, timeout=DEVICE_TIMEOUT_S)
            logs[service] = docker("logs", container, stderr=True)
            assert exit_code == "0", f"{service} exited {exit_code}:\n{logs[service]}"
        return logs

    def admin(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {self.keys['SECDOOD_ADMIN_API_KEY']}"}
        response = httpx.get(self.url + path, headers=headers, timeout=30)
        response.raise_for_status()
        return response.json()


def docker(*args: str, timeout: float = 120, stderr: bool = False) -> str:
    """``docker ARGS``'s output (with its stderr too when ``stderr``, e.g. container logs)."""
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return (result.stdout + (result.stderr if stderr else "")).strip()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed; run `make test-docker`")
    for image in ("secdood-server:latest", "secdood-device:latest"):
        docker("image", "inspect", image)  # built by `make docker`
    compose = ComposeStack(tmp_path_factory.mktemp("compose"))
    yield compose
    compose("down", "--volumes", "--timeout", "20", check=False)


def trained_model(output: str) -> str | None:
    """The model ``secdood-server train`` says it registered (its one JSON line)."""
    lines = [line for line in output.splitlines() if line.startswith('{"job"')]
    return json.loads(lines[-1])["model"] if lines else None


def run_summary(log: str) -> dict[str, Any]:
    """The JSON line ``secdood-device run --json`` ends its output with (the container log
    holds stdout, then stderr)."""
    lines = [line for line in log.splitlines() if line.startswith('{"clips"')]
    assert lines, f"no run --json summary in:\n{log}"
    return json.loads(lines[-1])


def assert_personalised_encrypted(log: str, context: str) -> None:
    """``personalize`` sent encrypted channels (context uploaded now / already with the
    cloud, as ``context`` says) and ``run`` scored every clip with the personalised head."""
    assert "channels encrypted" in log and "plaintext mode" not in log, log
    assert f"public CKKS context: {context}" in log, log
    summary = run_summary(log)
    assert summary["head"] == "personalised", summary
    assert summary["theta_status"] in {"fresh", "cached"}, summary
    assert summary["clips"] > 0, summary


def durable_state(stack: ComposeStack) -> dict[str, Any]:
    """What must survive a restart: devices (with their profiles) and registered models."""
    devices = stack.admin("/v1/devices")
    models = stack.admin("/v1/models")
    return {"devices": devices, "models": models}


def test_compose_refuses_to_start_without_keys(stack: ComposeStack, tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    output = stack("config", env_file=empty, check=False)
    assert "make compose-env" in output and "SECDOOD_ENROLLMENT_KEY" in output


@pytest.mark.timeout(3600)  # trains, scores on two devices twice, restarts: minutes, not seconds
def test_full_flow_and_restart_loses_nothing(stack: ComposeStack) -> None:
    # A small base model and HyperNetwork trained by the image's own CLI into the server
    # volume, so the first start serves and personalises at once instead of training the
    # full default models (that path is tests/service/test_serve_process.py's).
    trained = stack("run", "--rm", "--no-deps", "server", "train", *SMALL_TRAINING, timeout=1800)
    assert trained_model(trained) == BASE_MODEL, trained
    trained = stack("run", "--rm", "--no-deps", "server", "train", *SMALL_HYPERNETWORK)
    assert trained_model(trained) == HYPERNETWORK, trained
    stack("up", "-d", "--no-build", "server")
    stack.wait_healthy(FIRST_START_TIMEOUT_S)

    logs = stack.run_devices()
    for log in logs.values():
        assert "enrolled device" in log, log
        assert "Traceback" not in log, log
        assert_personalised_encrypted(log, context="uploaded now")

    # The REST API from the host, on the loopback-published port, with the generated key.
    features = [[0.01 * i for i in range(128)]] * 2
    scoring_key = stack.keys["SECDOOD_SCORING_API_KEY"]
    body = {"inputs": [{"name": "features", "shape": [2, 128], "datatype": "FP32",
                        "data": features}]}  # fmt: skip
    response = httpx.post(
        f"{stack.url}/v2/models/{BASE_MODEL}/infer",
        json=body,
        headers={"Authorization": f"Bearer {scoring_key}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    assert outputs["ood_score"]["shape"] == [2]
    unauthorised = httpx.post(f"{stack.url}/v2/models/{BASE_MODEL}/infer", json=body, timeout=30)
    assert unauthorised.status_code == 401

    before = durable_state(stack)
    assert {device["name"] for device in before["devices"]} == DEVICE_NAMES
    assert any(model["name"] == BASE_MODEL for model in before["models"])

    stack("down", "--timeout", "20")  # keeps the volumes
    stack("up", "-d", "--no-build", "server")
    stack.wait_healthy(300)  # no training this time: the model is in the volume
    assert durable_state(stack) == before

    # The devices kept their enrolment (token in their volume): no second enrolment; the
    # server kept their public CKKS contexts: personalising again uploads nothing.
    again = stack.run_devices()
    for log in again.values():
        assert "enrolled device" not in log, log
        assert_personalised_encrypted(log, context="already with the cloud")
    assert len(stack.admin("/v1/devices")) == len(DEVICE_NAMES)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("SECDOOD_ENROLLMENT_KEY", "not-the-key", "enrol"),
        ("SECDOOD_SERVER", "no-such-host:50051", "no-such-host:50051"),
    ],
)
def test_bad_device_settings_fail_with_one_clear_line(
    stack: ComposeStack, setting: str, value: str, message: str
) -> None:
    stack("up", "-d", "--no-build", "server")
    stack.wait_healthy(FIRST_START_TIMEOUT_S)
    env = {
        "SECDOOD_SERVER": "server:50051",
        "SECDOOD_ENROLLMENT_KEY": stack.keys["SECDOOD_ENROLLMENT_KEY"],
        "DEVICE_NAME": "cam-bad",
        setting: value,
    }
    flags = [item for key, val in env.items() for item in ("-e", f"{key}={val}")]
    result = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            f"{stack.project}_default",
            *flags,
            "secdood-device:latest",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "cam-bad" not in {device["name"] for device in stack.admin("/v1/devices")}
