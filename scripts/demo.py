"""``make demo``: the whole product on the built-in data, from a fresh clone.

1. Train the default base model and the HyperNetwork if the registry has none
   (a few minutes on two CPU cores, with progress bars), export the int8
   variant devices run; print the evaluation.
2. Start the cloud (gRPC gateway + REST API) on free loopback ports.
3. Two simulated devices with different camera shifts go through the device
   CLI exactly as a user would: ``enroll``, ``download``, ``simulate-camera``
   (their own shifted stream), ``run --report --json`` with the global head,
   ``personalize`` (their top-α embedding channels encrypted with CKKS; the
   secret key stays in the device's state directory), then
   ``run --personalize --report --json`` with the personalised head.
4. An application scores one clip through the REST API with the scoring key.
5. Everything is stopped; the report says what each step measured.

Each device is a separate ``secdood-device`` process with its own state
directory, so the cloud and the devices share nothing but the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from server.app import Service
from server.evaluation import evaluate, format_report
from server.export import export_latest_int8
from server.jobs import ensure_model
from server.registry import NotFoundError, open_registry
from server.registry.bundles import load_registered_bundle
from server.settings import Settings
from shared.data.corruptions import device_shift
from shared.data.digit_actions import DigitActionsConfig, load_split
from shared.model_names import BASE_MODEL, HYPERNETWORK

#: (name, camera corruption, severity) of the two simulated devices
DEVICES = tuple(
    (f"cam-{shift.corruption}", shift.corruption, shift.severity)
    for shift in (device_shift(0), device_shift(1))
)
STREAM_CLIPS = 120


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def device_cli(state_dir: Path, *args: str, show: bool = True) -> str:
    """Run ``secdood-device ARGS`` for the device whose state lives in ``state_dir``."""
    command = [sys.executable, "-m", "device_client.cli", *args]
    previous = ("", *args[:-1])
    shown = [
        "$KEY" if before == "--enrollment-key" else a
        for before, a in zip(previous, args, strict=True)
    ]
    print(f"$ secdood-device {' '.join(shown)}", flush=True)
    env = {**os.environ, "SECDOOD_DEVICE_DIR": str(state_dir)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"secdood-device {args[0]} failed: {done.stderr.strip()}")
    if show:
        print("  " + done.stdout.strip().replace("\n", "\n  "), flush=True)
    return done.stdout


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def run_device(name: str, corruption: str, severity: int, target: str, key: str, root: Path):
    """One device's life through the CLI; returns its global and personalised reports."""
    state, video = root / name, root / f"{name}.mp4"
    device_cli(state, "enroll", "--server", target, "--enrollment-key", key, "--name", name,
               "--corruption", corruption, "--severity", str(severity))  # fmt: skip
    device_cli(state, "download")
    device_cli(state, "download", "--variant", "int8")
    device_cli(state, "simulate-camera", "--out", str(video), "--clips", str(STREAM_CLIPS),
               "--seed", "7")  # fmt: skip
    scored = ["run", "--source", str(video), "--report", "--json", "--quiet"]
    global_head = last_json(device_cli(state, *scored, show=False))
    print(f"  global head: {json.dumps(global_head)}")
    device_cli(state, "personalize")
    personal = last_json(device_cli(state, *scored, "--personalize", show=False))
    print(f"  personalised head: {json.dumps(personal)}")
    device_cli(state, "status")
    return {"device": name, "shift": f"{corruption} s{severity}", "global": global_head,
            "personal": personal}  # fmt: skip


def print_devices(rows: list[dict]) -> None:
    header = f"{'device':<17}{'camera shift':<16}{'head':<14}{'ID flagged':>11}{'OOD flagged':>12}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        for head, label in (("global", "global"), ("personal", "personalised")):
            m = r[head]
            print(
                f"{r['device']:<17}{r['shift']:<16}{label:<14}"
                f"{100 * m['id_flagged_rate']:>10.1f}%{100 * m['ood_flagged_rate']:>11.1f}%"
            )


def prepare_models(settings: Settings) -> None:
    """Base model, its int8 variant and the HyperNetwork, trained/exported if missing."""
    with open_registry(settings.database_url, settings.data_dir) as registry:
        record = ensure_model(registry, BASE_MODEL)
        print(f"model {record.name} v{record.version} (sha256 {record.artifact_sha256[:12]}…)")
        try:
            registry.get_model(BASE_MODEL, record.version, variant="int8")
        except NotFoundError:
            print("exporting the int8 variant for devices …", flush=True)
            export_latest_int8(registry, BASE_MODEL)
        hypernet = ensure_model(registry, HYPERNETWORK)
        print(f"HyperNetwork {hypernet.name} v{hypernet.version}: {hypernet.metrics}")
    _, bundle = load_registered_bundle(settings, record.name, record.version)
    print(format_report(evaluate(bundle, shift_clips=120)))


def main() -> int:
    torch.set_num_threads(2)
    started = time.perf_counter()
    settings = Settings()
    section("1. The models")
    prepare_models(settings)

    section("2. Cloud up: gRPC gateway + REST API")
    service = Service(settings.model_copy(update={"rest_port": 0, "grpc_port": 0}))
    service.start()
    try:
        deadline = time.monotonic() + 120
        while not service.state.ready and time.monotonic() < deadline:
            time.sleep(0.2)
        target = f"{service.settings.host}:{service.grpc_port}"
        print(f"gRPC {target}, REST http://{service.settings.host}:{service.rest_port}, ready")
        keys = service.settings.data_dir / "keys.json"
        print(f"keys: {keys} (generated on first start; $KEY below is its enrollment_key)")

        section("3. Two devices with different camera shifts, through the device CLI")
        key = service.settings.enrollment_key.get_secret_value()
        devices_dir = Path(tempfile.mkdtemp(prefix="secdood-demo-devices-"))
        rows = [run_device(*device, target, key, devices_dir) for device in DEVICES]
        print()
        print_devices(rows)

        section("4. An application scores a clip over REST")
        test_clips = load_split("test", DigitActionsConfig())
        frames, action = test_clips.frames[3:4], test_clips.actions[3]
        clip = (frames.astype(np.float32) / 255.0).transpose(0, 1, 4, 2, 3)  # [N,T,3,H,W]
        reply = httpx.post(
            f"http://{service.settings.host}:{service.rest_port}/v1/ood/score",
            json={"clip": clip.tolist()},
            headers={"X-API-Key": service.settings.scoring_api_key.get_secret_value()},
            timeout=30,
        )
        body = reply.json()
        print(f"POST /v1/ood/score -> {reply.status_code}: label {body.get('label')!r} "
              f"(truth {action!r}), ood_score {body.get('ood_score'):.3f}, "
              f"is_ood {body.get('is_ood')}")  # fmt: skip
    finally:
        section("5. Shutting down")
        service.stop()
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; data in {settings.data_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
