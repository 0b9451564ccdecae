"""``secdood-device``: enrol with the cloud, download the model, score video locally.

Examples::

    secdood-device enroll --server 127.0.0.1:50051 --enrollment-key KEY --name cam-1 \\
        --corruption fog --severity 3
    secdood-device download [--variant float]
    secdood-device run --source clip.mp4|DIR|camera:0 [--adapt none|leantta|zo] [--int8]
    secdood-device bench [--quick]

State (id, token, models) lives in ``$SECDOOD_DEVICE_DIR`` or ``~/.secdood-device``
(see :mod:`device_client.state`). User errors (missing file, unreadable video,
not enrolled, server unreachable, refused call) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from google.protobuf.json_format import MessageToDict

from device_client.gateway_client import GatewayClient, GatewayClientError
from device_client.state import DeviceIdentity, DeviceState, NotEnrolledError
from shared.data.corruptions import CORRUPTIONS

PROG = "secdood-device"
DEFAULT_MODEL = "secdood_base"
EXIT_USER_ERROR = 2
#: clips scored per forward pass; small enough for a Raspberry Pi's memory
BATCH_CLIPS = 16


class CliError(Exception):
    """A failure to report as one line (no traceback) with exit code 2."""


def _client(state: DeviceState) -> tuple[GatewayClient, DeviceIdentity]:
    identity = state.load_identity()
    client = GatewayClient(identity.server, token=state.load_token(), root_cert=identity.root_cert)
    return client, identity


def cmd_enroll(args: argparse.Namespace, state: DeviceState) -> int:
    if (args.corruption is None) != (args.severity is None):
        raise CliError("give --corruption and --severity together, or neither")
    root_cert = str(Path(args.root_cert).resolve()) if args.root_cert else None
    if root_cert and not Path(root_cert).is_file():
        raise CliError(f"TLS root certificate not found: {root_cert}")
    profile = {
        "corruption": args.corruption or "",
        "severity": args.severity or 0,
        "hardware": args.hardware,
    }
    with GatewayClient(args.server, root_cert=root_cert) as client:
        enrollment = client.enroll(args.enrollment_key, args.name, profile)
    identity = DeviceIdentity(
        server=args.server,
        device_id=enrollment.device_id,
        name=args.name,
        token_expires_at=enrollment.expires_at,
        profile=profile,
        root_cert=root_cert,
    )
    state.save_enrollment(identity, enrollment.token)
    expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(enrollment.expires_at))
    print(f"enrolled device {enrollment.device_id} as {args.name!r}; token valid until {expires}")
    print(f"state saved in {state.root}")
    return 0


def cmd_download(args: argparse.Namespace, state: DeviceState) -> int:
    client, _identity = _client(state)
    dest = state.model_path(args.name, args.variant)
    state.ensure_dirs()
    with client:
        info = client.download_model(dest, args.name, args.variant, args.version)
    state.save_model_info(args.name, args.variant, MessageToDict(info))
    print(
        f"downloaded {info.name} v{info.version} ({info.variant}, {info.size_bytes} bytes, "
        f"sha256 {info.sha256[:12]}…) to {dest}"
    )
    return 0


def _batches(clips: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    for clip in clips:
        batch.append(clip)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def _model_path(args: argparse.Namespace, state: DeviceState) -> Path:
    variant = "int8" if args.int8 else args.variant
    model_path = Path(args.model) if args.model else state.model_path(DEFAULT_MODEL, variant)
    if not model_path.is_file():
        hint = f" --variant {variant}" if variant != "float" else ""
        raise CliError(
            f"no model at {model_path}; run `{PROG} download{hint}` first (or pass --model FILE)"
        )
    return model_path


def cmd_run(args: argparse.Namespace, state: DeviceState) -> int:
    # Imported here: torch and the model code are only needed to score.
    from tqdm import tqdm

    from device_client.runtime import DeviceRuntime
    from device_client.sources import ClipSource
    from shared.ood.registry import DETECTORS

    if not args.source.startswith("camera:") and not Path(args.source).exists():
        raise CliError(f"video file not found: {args.source}")
    model_path = _model_path(args, state)
    if args.detector not in DETECTORS:
        raise CliError(f"unknown detector {args.detector!r}; choose one of {sorted(DETECTORS)}")
    runtime = DeviceRuntime.from_artifact(
        model_path,
        adapt=args.adapt,
        adapt_layers=args.adapt_layers,
        int8=True if args.int8 else None,
        engine=args.engine,
    )
    config = runtime.bundle.config
    source = ClipSource(args.source, config.n_frames, config.size)
    source.check()

    print(f"{'clip':>5}  {'label':<16} {'ood_score':>10}  verdict")
    n_clips = n_ood = 0
    seconds = 0.0
    progress = tqdm(
        desc=f"{source.describe()} [{args.adapt}{', int8' if runtime.is_int8 else ''}]",
        unit="clip",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=args.quiet,
    )
    batch_size = 1 if source.is_camera or args.adapt != "none" else BATCH_CLIPS
    try:
        for batch in _batches(iter(source), batch_size):
            start = time.perf_counter()
            verdicts = runtime.score_clips(batch, detector=args.detector)
            seconds += time.perf_counter() - start
            for label, score, is_ood in zip(
                verdicts.labels, verdicts.ood_score.tolist(), verdicts.is_ood.tolist(), strict=True
            ):
                progress.write(
                    f"{n_clips:>5}  {label:<16} {score:>10.4f}  {'OOD' if is_ood else 'ID'}",
                    file=sys.stdout,
                )
                n_clips += 1
                n_ood += int(is_ood)
            progress.update(len(batch))
            progress.set_postfix(fps=f"{n_clips * config.n_frames / seconds:.0f}", ood=n_ood)
    except KeyboardInterrupt:
        source.end_reason = "interrupted"
    finally:
        progress.close()
    if n_clips == 0:
        raise CliError(f"{source.describe()}: no complete clip before {source.end_reason}")
    threshold = runtime.pipeline.threshold(args.detector)
    mean_ms = 1000.0 * seconds / n_clips
    print(
        f"summary: {n_clips} clips, {n_ood} OOD ({100.0 * n_ood / n_clips:.1f} %), "
        f"detector {args.detector} (threshold {threshold:.4f}), {mean_ms:.1f} ms per clip, "
        f"adapt {args.adapt}{', int8' if runtime.is_int8 else ''}; {source.end_reason}"
    )
    if args.report:
        client, _identity = _client(state)
        info = state.load_model_info(DEFAULT_MODEL, "int8" if args.int8 else args.variant) or {}
        with client:
            client.report_telemetry(
                clips_scored=n_clips,
                ood_flagged=n_ood,
                mean_latency_ms=mean_ms,
                frames_per_second=n_clips * config.n_frames / seconds if seconds > 0 else 0.0,
                model_sha256=info.get("sha256", "") if not args.model else "",
            )
        print("telemetry reported")
    return 0


def cmd_bench(args: argparse.Namespace, state: DeviceState) -> int:
    from device_client.benchmark import run_device_benchmark

    float_path = Path(args.model) if args.model else state.model_path(DEFAULT_MODEL, "float")
    int8_path = (
        Path(args.int8_model) if args.int8_model else state.model_path(DEFAULT_MODEL, "int8")
    )
    for path, variant in ((float_path, "float"), (int8_path, "int8")):
        if not path.is_file():
            raise CliError(
                f"no {variant} model at {path}; run `{PROG} download --variant {variant}`"
            )
    run_device_benchmark(float_path, int8_path, Path(args.out), quick=args.quick)
    return 0


def cmd_simulate_camera(args: argparse.Namespace, state: DeviceState) -> int:
    from device_client.simulated_camera import write_simulated_camera

    corruption, severity = args.corruption, args.severity
    if corruption is None and state.is_enrolled():
        profile = state.load_identity().profile or {}
        corruption, severity = profile.get("corruption") or None, profile.get("severity", 0)
    out = write_simulated_camera(
        args.out, args.clips, corruption, severity or 0, args.ood_fraction, args.seed
    )
    shift = f"{corruption} severity {severity}" if corruption else "no corruption"
    print(f"wrote {args.clips} clips ({shift}) to {out} (ground truth beside it)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument(
        "--state-dir", help="device state folder (default $SECDOOD_DEVICE_DIR or ~/.secdood-device)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    enroll = sub.add_parser("enroll", help="register this device with the cloud")
    enroll.add_argument("--server", required=True, metavar="HOST:PORT")
    enroll.add_argument("--enrollment-key", required=True, metavar="KEY")
    enroll.add_argument("--name", required=True)
    enroll.add_argument("--corruption", choices=CORRUPTIONS, help="camera shift of this device")
    enroll.add_argument("--severity", type=int, choices=range(1, 6), help="1 (mild) .. 5 (harsh)")
    enroll.add_argument("--hardware", default=platform.machine(), help="hardware description")
    enroll.add_argument("--root-cert", metavar="PEM", help="trust this certificate (enables TLS)")
    enroll.set_defaults(func=cmd_enroll)

    download = sub.add_parser("download", help="download a model from the cloud")
    download.add_argument("--name", default=DEFAULT_MODEL)
    download.add_argument("--variant", default="float", help="float or int8")
    download.add_argument("--version", type=int, default=0, help="0 = latest")
    download.set_defaults(func=cmd_download)

    run = sub.add_parser("run", help="score a video file, a folder of videos or a camera")
    run.add_argument("--source", required=True, metavar="FILE.mp4|DIR|camera:N")
    run.add_argument("--detector", default="energy")
    run.add_argument("--variant", default="float", help="which downloaded variant to use")
    run.add_argument("--int8", action="store_true", help="use the int8 model (variant int8)")
    run.add_argument("--adapt", choices=("none", "leantta", "zo"), default="none")
    run.add_argument(
        "--adapt-layers", type=int, default=3, choices=range(0, 4), help="conv BNs per stream"
    )
    run.add_argument(
        "--engine",
        default="auto",
        help="quantised engine: x86, fbgemm, onednn, qnnpack, or auto (default: the fastest "
        "on this CPU, measured at load)",
    )
    run.add_argument("--model", metavar="FILE", help="score with this artifact file instead")
    run.add_argument("--report", action="store_true", help="send telemetry to the cloud after")
    run.add_argument("--quiet", action="store_true", help="no live progress line on stderr")
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser("bench", help="run the device benchmarks on this device")
    bench.add_argument("--quick", action="store_true", help="a small, fast version")
    bench.add_argument("--model", metavar="FILE", help="float artifact (default: downloaded)")
    bench.add_argument("--int8-model", metavar="FILE", help="int8 artifact (default: downloaded)")
    bench.add_argument("--out", default="device-bench.json", help="where to write the JSON")
    bench.set_defaults(func=cmd_bench)
    _add_simulate_camera(sub)
    return parser


def _add_simulate_camera(sub) -> None:
    sim = sub.add_parser(
        "simulate-camera", help="write an .mp4 of digit-actions clips seen through a camera shift"
    )
    sim.add_argument("--out", required=True, metavar="FILE.mp4")
    sim.add_argument("--clips", type=int, default=24)
    sim.add_argument("--corruption", choices=CORRUPTIONS, help="default: the enrolled profile's")
    sim.add_argument("--severity", type=int, choices=range(1, 6))
    sim.add_argument("--ood-fraction", type=float, default=0.3)
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=cmd_simulate_camera)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state = DeviceState(args.state_dir)
    try:
        return args.func(args, state)
    except (
        CliError,
        NotEnrolledError,
        GatewayClientError,
        OSError,  # missing or unreadable files, permissions
        ValueError,  # includes VideoError, unreadable model artifacts, damaged JSON
    ) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
