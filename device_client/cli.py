"""secdood-device: enrol with the cloud, download the model, personalise, score video locally.

Examples::

    secdood-device enroll --server 127.0.0.1:50051 --enrollment-key KEY --name cam-1 \\
        --corruption fog --severity 3
    secdood-device download [--variant float|int8]
    secdood-device personalize [--source S] [--alpha 0.25] [--mode per_device|per_sample] \\
        [--no-refine]
    secdood-device run --source clip.mp4|DIR|camera:0 [--personalize] [--adapt none|leantta|zo]
    secdood-device status
    secdood-device bench [--quick]
    secdood-device personalize-diffusion --images DIR    # ZO textual inversion, int8 DDPM
    secdood-device sample-diffusion --token FILE --out grid.png

State (id, token, models, keys, cached personalised head) lives in
``$SECDOOD_DEVICE_DIR`` or ``~/.secdood-device`` (see :mod:`device_client.state`
and :mod:`device_client.keyring`). User errors (missing file, unreadable video,
not enrolled, server unreachable, refused call) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from google.protobuf.json_format import MessageToDict

from device_client.channel_selection import DEFAULT_WINDOW
from device_client.commands import personalize as personalize_command
from device_client.commands import run as run_command
from device_client.commands.common import (
    DEFAULT_MODEL,
    EXIT_USER_ERROR,
    PROG,
    CliError,
    connect,
)
from device_client.commands.diffusion import add_diffusion_commands
from device_client.gateway_client import GatewayClient, GatewayClientError
from device_client.state import DeviceIdentity, DeviceState, NotEnrolledError
from shared.data.corruptions import CORRUPTIONS


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
    client, _identity = connect(state)
    dest = state.model_path(args.name, args.variant)
    state.ensure_dirs()
    with client:
        try:
            info = client.download_model(dest, args.name, args.variant, args.version)
        except GatewayClientError as error:
            if (
                error.code is not None
                and error.code.name == "NOT_FOUND"
                and args.variant != "float"
            ):
                raise CliError(
                    f"the cloud has no {args.variant!r} variant of {args.name}: {error}; on the "
                    f"server run `secdood-server export --{args.variant}` (serve exports int8 "
                    "by itself after its first model)"
                ) from None
            raise
    state.save_model_info(args.name, args.variant, MessageToDict(info))
    print(
        f"downloaded {info.name} v{info.version} ({info.variant}, {info.size_bytes} bytes, "
        f"sha256 {info.sha256[:12]}…) to {dest}"
    )
    return 0


def cmd_status(args: argparse.Namespace, state: DeviceState) -> int:
    """What this device knows, without the network."""
    from device_client.device_status import collect_status, format_status

    status = collect_status(state)
    print(json.dumps(status) if args.json else format_status(status))
    return 0


def cmd_bench(args: argparse.Namespace, state: DeviceState) -> int:
    import json

    from device_client.measure import format_runtime, measure_runtime

    float_path = Path(args.model) if args.model else state.model_path(DEFAULT_MODEL, "float")
    int8_path = (
        Path(args.int8_model) if args.int8_model else state.model_path(DEFAULT_MODEL, "int8")
    )
    for path, variant in ((float_path, "float"), (int8_path, "int8")):
        if not path.is_file():
            raise CliError(
                f"no {variant} model at {path}; run `{PROG} download --variant {variant}`"
            )
    results = measure_runtime(float_path, int8_path, quick=args.quick)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(format_runtime(results))
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
    run.add_argument(
        "--source",
        required=True,
        metavar="FILE.mp4|DIR|camera:N",
        help="a video file, a folder of videos (sorted by name) or OpenCV camera N",
    )
    run.add_argument(
        "--detector",
        default="energy",
        help="OOD score: energy, msp, maxlogit, gen, temperature, mahalanobis, knn, vim, ... "
        "(default energy; the threshold comes with the model)",
    )
    run.add_argument("--variant", default="float", help="which downloaded variant to use")
    run.add_argument("--int8", action="store_true", help="use the int8 model (variant int8)")
    run.add_argument(
        "--adapt",
        choices=("none", "leantta", "zo"),
        default=None,
        help="test-time adaptation without backprop: none, leantta (per-clip BatchNorm "
        "statistics) or zo (zeroth-order updates of BatchNorm affine parameters); default "
        "none, but leantta with --personalize (the embeddings the HyperNetwork reads; "
        "--adapt none for an H trained on plain ones)",
    )
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
    run.add_argument(
        "--personalize",
        action="store_true",
        help="score with the personalised head (cached theta at once, refreshed when the "
        "drift rule fires; offline the cached theta is used and marked stale)",
    )
    run.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        metavar="CLIPS",
        help="with --personalize: theta is refreshed from the mean of this many recent clips "
        f"(default {DEFAULT_WINDOW}); automatic refreshes wait for a full window",
    )
    run.add_argument(
        "--theta-max-age",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --personalize: also refresh a theta older than this",
    )
    run.add_argument("--report", action="store_true", help="send telemetry to the cloud after")
    run.add_argument(
        "--json",
        action="store_true",
        help="end with one JSON line: clips, head, id_flagged_rate, ood_flagged_rate (known "
        "for simulate-camera videos), ...",
    )
    run.add_argument("--quiet", action="store_true", help="no live progress line on stderr")
    run.set_defaults(func=run_command.run)

    _add_personalize(sub)
    status = sub.add_parser("status", help="enrolment, models, keys, cached theta (offline)")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(func=cmd_status)

    bench = sub.add_parser(
        "bench", help="measure this device: float vs int8, LeanTTA's latency cost"
    )
    bench.add_argument("--quick", action="store_true", help="a small, fast version")
    bench.add_argument("--model", metavar="FILE", help="float artifact (default: downloaded)")
    bench.add_argument("--int8-model", metavar="FILE", help="int8 artifact (default: downloaded)")
    bench.add_argument("--out", default="device-bench.json", help="where to write the JSON")
    bench.set_defaults(func=cmd_bench)
    _add_simulate_camera(sub)
    add_diffusion_commands(sub)
    return parser


def _add_personalize(sub) -> None:
    personalize = sub.add_parser(
        "personalize",
        help="get a personalised head from the cloud's HyperNetwork (encrypted)",
        description="Observe a window of clips, send the top-alpha embedding channels of its "
        "mean encrypted with CKKS (the secret key never leaves this device), get back the "
        "personalised head theta, cache it, and print the OOD-flag rate before and after.",
    )
    personalize.add_argument(
        "--source",
        metavar="FILE.mp4|DIR|camera:N",
        help="clips to personalise on (default: the enrolled profile's simulated camera, "
        "else camera:0)",
    )
    personalize.add_argument(
        "--clips", type=int, default=DEFAULT_WINDOW, help=f"window size in clips ({DEFAULT_WINDOW})"
    )
    personalize.add_argument(
        "--alpha", type=float, default=0.25, help="fraction of channels sent, in (0, 1]"
    )
    personalize.add_argument(
        "--mode",
        choices=("per_device", "per_sample"),
        default="per_device",
        help="per_device: one theta for the device, cached, works offline; per_sample: one "
        "round trip per clip",
    )
    personalize.add_argument(
        "--plaintext", action="store_true", help="send the channels unencrypted (trusted network)"
    )
    personalize.add_argument(
        "--no-refine",
        action="store_true",
        help="use the cloud's theta as sent (default: refine it on the window, no labels)",
    )
    personalize.add_argument(
        "--new-keys", action="store_true", help="replace the device's CKKS keys (e.g. damaged)"
    )
    personalize.add_argument(
        "--adapt",
        choices=("none", "leantta"),
        default=None,
        help="how the base model runs before its embeddings are sent: leantta (the default, "
        "what the HyperNetwork reads) or none (for an H trained on plain embeddings)",
    )
    personalize.add_argument("--detector", default="energy", help="OOD score for before/after")
    personalize.add_argument("--variant", default="float", help="which downloaded model to use")
    personalize.add_argument("--int8", action="store_true", help="use the int8 model")
    personalize.add_argument("--model", metavar="FILE", help="use this artifact file instead")
    personalize.add_argument("--seed", type=int, default=1, help="seed of the simulated window")
    personalize.set_defaults(func=personalize_command.personalize)


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
