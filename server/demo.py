"""``make demo``: the whole product on the built-in data, from a fresh clone.

1. Train the default base model and the HyperNetwork if the registry has none
   (a few minutes on two CPU cores, with progress bars); print the evaluation.
2. Start the cloud (gRPC gateway + REST API) on free loopback ports.
3. Two simulated devices with different camera shifts enrol, upload their
   *public* CKKS context, download the model over gRPC (sha256-checked), film
   their own shifted stream, and score it twice: with the global head, and
   with a classifier personalised by the cloud's HyperNetwork from their
   *encrypted* top-α embedding channels. Telemetry goes back to the cloud.
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
from device_client.personalization import Personalizer
from device_client.simulated_camera import simulated_stream
from server.app import HYPERNETWORK, Service, resolve_keys
from server.cli import BASE_MODEL, load_registered_bundle, open_registry
from server.evaluation import evaluate, format_report
from server.jobs import ensure_model
from server.settings import Settings
from shared.data.corruptions import device_shift
from shared.he import create_context, public_context_bytes
from shared.models.checkpoint import load_bundle
from shared.ood.metrics import ood_metrics
from shared.pipeline import OODPipeline

#: (name, camera corruption, severity) of the two simulated devices
DEVICES = tuple(
    (f"cam-{shift.corruption}", shift.corruption, shift.severity)
    for shift in (device_shift(0), device_shift(1))
)
STREAM_CLIPS = 120


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def device_metrics(pipeline: OODPipeline, z: torch.Tensor, labels: np.ndarray, logits=None):
    """ID accuracy, AUROC and FPR95 (Energy) of one head on a device's stream."""
    verdicts = pipeline.score_features(z, detector="energy", logits=logits)
    is_id = labels >= 0
    scores = verdicts.ood_score.numpy()
    predicted = verdicts.logits.argmax(1).numpy()
    return {
        "id_accuracy": float((predicted[is_id] == labels[is_id]).mean()),
        **ood_metrics(scores[is_id], scores[~is_id]),
        "flagged": int(verdicts.is_ood.sum()),
    }


def run_device(
    name: str, corruption: str, severity: int, target: str, enrollment_key: str, workdir: Path
) -> dict:
    """One device's life: enrol, upload its public context, download, score, personalise."""
    with GatewayClient(target) as client:
        enrolment = client.enroll(
            enrollment_key, name, {"corruption": corruption, "severity": severity}
        )
    model_path = workdir / name / "secdood_base.pt"
    model_path.parent.mkdir(parents=True, exist_ok=True)
    context = create_context()  # the secret key never leaves this function
    with GatewayClient(target, token=enrolment.token) as client:
        receipt = client.upload_context(public_context_bytes(context))
        started = time.perf_counter()
        info = client.download_model(model_path)
        download_s = time.perf_counter() - started

        pipeline = OODPipeline(load_bundle(model_path))
        frames, truth = simulated_stream(STREAM_CLIPS, corruption, severity, 0.4, seed=7)
        labels = np.array([t["label"] for t in truth])
        started = time.perf_counter()
        z = pipeline.embed_clips(frames)
        seconds = time.perf_counter() - started
        global_head = device_metrics(pipeline, z, labels)

        config = pipeline.bundle.config
        personalizer = Personalizer(
            client, config.embed_dim, config.num_classes, context=context, alpha=0.25
        )
        personalizer.observe(z.numpy())
        started = time.perf_counter()
        personalizer.refresh()  # one encrypted round trip for this device's Θ
        round_trip_s = time.perf_counter() - started
        logits = personalizer.logits(z.numpy())
        personal = device_metrics(pipeline, z, labels, logits=logits)
        client.report_telemetry(
            clips_scored=len(frames),
            ood_flagged=personal["flagged"],
            mean_latency_ms=1000 * seconds / len(frames),
            frames_per_second=len(frames) * frames.shape[1] / seconds,
            model_sha256=info.sha256,
        )
    return {
        "device": name,
        "shift": f"{corruption} s{severity}",
        "global": global_head,
        "personal": personal,
        "context_mb": receipt.size_bytes / 1e6,
        "download": f"v{info.version} {info.size_bytes / 1e6:.1f} MB in {download_s:.2f} s",
        "round_trip_s": round_trip_s,
        "he_seconds": personalizer.stats.he_seconds,
        "bytes_up": personalizer.stats.bytes_up,
        "bytes_down": personalizer.stats.bytes_down,
        "ms_per_clip": 1000 * seconds / len(frames),
    }


def print_devices(rows: list[dict]) -> None:
    header = f"{'device':<17}{'camera shift':<20}{'head':<14}{'ID acc':>8}{'AUROC':>8}{'FPR95':>8}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        for head, label in (("global", "global"), ("personal", "personalised")):
            m = r[head]
            print(
                f"{r['device']:<17}{r['shift']:<20}{label:<14}{m['id_accuracy']:>8.3f}"
                f"{m['auroc']:>8.3f}{m['fpr95']:>8.3f}"
            )
    print()
    for r in rows:
        print(
            f"{r['device']}: public context {r['context_mb']:.1f} MB uploaded once; model "
            f"{r['download']}; encrypted round trip {r['round_trip_s']:.2f} s "
            f"(cloud HE {r['he_seconds']:.2f} s), {r['bytes_up'] / 1024:.0f} KiB up / "
            f"{r['bytes_down'] / 1024:.0f} KiB down; local inference {r['ms_per_clip']:.1f} ms/clip"
        )


def main() -> int:
    torch.set_num_threads(2)
    started = time.perf_counter()
    settings = Settings()
    registry = open_registry(settings)
    section("1. The base model")
    record = ensure_model(registry, BASE_MODEL)
    print(f"model {record.name} v{record.version} (sha256 {record.artifact_sha256[:12]}…)")
    hypernet = ensure_model(registry, HYPERNETWORK)
    print(f"HyperNetwork {hypernet.name} v{hypernet.version}: {hypernet.metrics}")
    registry.close()
    devices_dir = Path(tempfile.mkdtemp(prefix="secdood-demo-devices-"))
    _, bundle = load_registered_bundle(settings, record.name, record.version)
    print(format_report(evaluate(bundle, shift_clips=120)))

    section("2. Cloud up: gRPC gateway + REST API")
    # The demo keeps its own copy of the keys: the service holds only their digests.
    keyed = resolve_keys(settings.model_copy(update={"rest_port": 0, "grpc_port": 0}))
    service = Service(keyed)
    service.start()
    try:
        deadline = time.monotonic() + 120
        while not service.state.ready and time.monotonic() < deadline:
            time.sleep(0.2)
        target = f"{service.settings.host}:{service.grpc_port}"
        print(f"gRPC {target}, REST http://{service.settings.host}:{service.rest_port}, ready")

        section("3. Two devices with different camera shifts")
        key = keyed.enrollment_key.get_secret_value()
        rows = [run_device(*device, target, key, devices_dir) for device in DEVICES]
        print_devices(rows)

        section("4. An application scores a clip over REST")
        frames, truth = simulated_stream(1, None, 0, 0.0, seed=3)
        clip = (frames.astype(np.float32) / 255.0).transpose(0, 1, 4, 2, 3)  # [N,T,3,H,W]
        reply = httpx.post(
            f"http://{service.settings.host}:{service.rest_port}/v1/ood/score",
            json={"clip": clip.tolist()},
            headers={"X-API-Key": keyed.scoring_api_key.get_secret_value()},
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


if __name__ == "__main__":
    sys.exit(main())
