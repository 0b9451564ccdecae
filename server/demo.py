"""``make demo``: the whole product on the built-in data, from a fresh clone.

1. Train the default base model if the registry has none (a few minutes on two
   CPU cores, with a progress bar), and print its evaluation report.
2. Start the cloud (gRPC gateway + REST API) on free loopback ports.
3. Two simulated devices with different camera shifts enrol, download the
   model over gRPC (sha256-checked), film their own shifted stream, score it
   locally and report telemetry.
4. An application scores one clip through the REST API.
5. Everything is stopped; the report says what each step measured.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from device_client.gateway_client import GatewayClient
from device_client.simulated_camera import simulated_stream
from server.app import Service
from server.cli import BASE_MODEL, open_registry
from server.evaluation import evaluate, format_report
from server.jobs import ensure_model
from server.settings import Settings
from shared.models.checkpoint import load_bundle
from shared.ood.metrics import ood_metrics
from shared.pipeline import OODPipeline

#: (name, camera corruption, severity) of the two simulated devices
DEVICES = (("cam-fog", "fog", 5), ("cam-noise", "gaussian_noise", 5))
STREAM_CLIPS = 120


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def run_device(
    name: str, corruption: str, severity: int, target: str, enrollment_key: str, workdir: Path
) -> dict:
    """One device's life: enrol, download, score its own shifted stream, report."""
    with GatewayClient(target) as client:
        enrolment = client.enroll(
            enrollment_key, name, {"corruption": corruption, "severity": severity}
        )
    model_path = workdir / name / "secdood_base.pt"
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with GatewayClient(target, token=enrolment.token) as client:
        started = time.perf_counter()
        info = client.download_model(model_path)
        download_s = time.perf_counter() - started

        pipeline = OODPipeline(load_bundle(model_path))
        frames, truth = simulated_stream(STREAM_CLIPS, corruption, severity, 0.4, seed=7)
        started = time.perf_counter()
        verdicts = pipeline.score_clips(frames)
        seconds = time.perf_counter() - started
        labels = np.array([t["label"] for t in truth])
        is_id = labels >= 0
        predicted = verdicts.logits.argmax(1).numpy()
        scores = verdicts.ood_score.numpy()
        metrics = ood_metrics(scores[is_id], scores[~is_id])
        client.report_telemetry(
            clips_scored=len(frames),
            ood_flagged=int(verdicts.is_ood.sum()),
            mean_latency_ms=1000 * seconds / len(frames),
            frames_per_second=len(frames) * frames.shape[1] / seconds,
            model_sha256=info.sha256,
        )
    return {
        "device": name,
        "shift": f"{corruption} s{severity}",
        "model": f"v{info.version} {info.size_bytes / 1e6:.1f} MB in {download_s:.2f} s",
        "id_accuracy": float((predicted[is_id] == labels[is_id]).mean()),
        "auroc": metrics["auroc"],
        "fpr95": metrics["fpr95"],
        "flagged": f"{int(verdicts.is_ood.sum())}/{len(frames)}",
        "ms_per_clip": 1000 * seconds / len(frames),
    }


def main() -> int:
    torch.set_num_threads(2)
    started = time.perf_counter()
    settings = Settings()
    registry = open_registry(settings)
    section("1. The base model")
    record = ensure_model(registry, BASE_MODEL)
    print(f"model {record.name} v{record.version} (sha256 {record.artifact_sha256[:12]}…)")
    registry.close()
    bundle_path = Path(tempfile.mkdtemp()) / "model.pt"
    print(format_report(evaluate(_load(settings, record), shift_clips=120)))

    section("2. Cloud up: gRPC gateway + REST API")
    service = Service(settings.model_copy(update={"rest_port": 0, "grpc_port": 0}))
    service.start()
    try:
        deadline = time.monotonic() + 120
        while not service.state.ready and time.monotonic() < deadline:
            time.sleep(0.2)
        target = f"{service.settings.host}:{service.grpc_port}"
        print(f"gRPC {target}, REST http://{service.settings.host}:{service.rest_port}, ready")

        section("3. Two devices with different camera shifts")
        key = service.settings.enrollment_key.get_secret_value()
        rows = [run_device(*device, target, key, bundle_path.parent) for device in DEVICES]
        header = f"{'device':<10}{'shift':<18}{'ID acc':>8}{'AUROC':>8}{'FPR95':>8}"
        header += f"{'flagged':>9}{'ms/clip':>9}  model"
        print(header + "\n" + "-" * len(header))
        for r in rows:
            print(
                f"{r['device']:<10}{r['shift']:<18}{r['id_accuracy']:>8.3f}{r['auroc']:>8.3f}"
                f"{r['fpr95']:>8.3f}{r['flagged']:>9}{r['ms_per_clip']:>9.1f}  {r['model']}"
            )

        section("4. An application scores a clip over REST")
        frames, truth = simulated_stream(1, None, 0, 0.0, seed=3)
        clip = (frames.astype(np.float32) / 255.0).transpose(0, 1, 4, 2, 3)  # [N,T,3,H,W]
        reply = httpx.post(
            f"http://{service.settings.host}:{service.rest_port}/v1/ood/score",
            json={"clip": clip.tolist()},
            headers={"X-API-Key": service.settings.scoring_api_key.get_secret_value()},
            timeout=30,
        )
        body = reply.json()
        print(f"POST /v1/ood/score -> {reply.status_code}: label {body.get('label')!r} "
              f"(truth {truth[0]['action']!r}), ood_score {body.get('ood_score'):.3f}, "
              f"is_ood {body.get('is_ood')}")  # fmt: skip
    finally:
        section("5. Shutting down")
        service.stop()
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; data in {settings.data_dir}/")
    return 0


def _load(settings: Settings, record):
    from shared.models.checkpoint import bundle_from_bytes

    registry = open_registry(settings)
    try:
        return bundle_from_bytes(registry.artifacts.read_bytes(record.artifact_sha256))
    finally:
        registry.close()


if __name__ == "__main__":
    sys.exit(main())
