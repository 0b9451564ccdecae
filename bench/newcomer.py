"""Benchmark: the newcomer's path through ``secdood-device``, global head vs personalised.

    python -m bench.newcomer [--quick]

For each (camera corruption, severity) pair and seed, one fresh simulated device
walks the documented CLI path against a real gRPC gateway on loopback:
``enroll --corruption C --severity S`` → ``download`` → ``simulate-camera`` (its
own shifted stream, 30 % near/far OOD, ground truth beside it) → ``run --json``
(global head) → ``personalize`` (a window of its simulated camera, the device's default
size, α = 0.25, encrypted with the product's CKKS parameters) → ``run --personalize
--json``; then the same with ``personalize --no-refine`` (Θ as the cloud sends it).
The flag rates are the CLI's own JSON report: the global head is judged with the
model's Energy threshold (calibrated to accept 95 % of clean ID validation clips), the
personalised head with that threshold plus the offset stored with its Θ
(``device_client.personalization.energy_offset``; its quantile chosen on validation
devices by ``bench/personal_threshold.py``). The AUROC columns
(Energy, ID positive) come from the per-clip scores the CLI printed, to tell a
threshold problem from a separability problem.

The targets of the newcomer issue: after ``personalize``, at most 20 % of ID
clips flagged and at least 80 % of OOD clips flagged, per device.

The base model and HyperNetwork are the latest registered in ``$SECDOOD_DATA_DIR``
(trained first if missing), copied into a throwaway registry for the gateway.
Writes bench/results/newcomer.json and the "newcomer" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.report import markdown_table, write_json, write_section
from device_client.cli import main as device_cli
from device_client.head_refinement import RefinementSettings
from device_client.personalization import THRESHOLD_QUANTILE
from device_client.simulated_camera import load_truth
from server.gateway import build_grpc_server
from server.jobs import ensure_model
from server.registry import open_registry
from server.settings import Settings
from shared.model_names import BASE_MODEL, HYPERNETWORK
from shared.ood.metrics import ood_metrics

#: (corruption, severity): the issue's fog camera first, then seen and unseen corruption types
#: (the HyperNetwork trains on devices generated from the train split of
#: ``shared.data.device_shifts.SHIFT_SPLIT``, which holds fog, gaussian_noise and motion_blur;
#: pixelate is a validation type, brightness and jpeg_compression are test types)
PAIRS = (
    ("fog", 3),
    ("gaussian_noise", 3),
    ("motion_blur", 4),
    ("pixelate", 4),
    ("brightness", 3),
    ("jpeg_compression", 5),
)
SEEDS = (0, 1, 2, 3, 4)
STREAM_CLIPS = 120
ENROLL_KEY = "newcomer-bench-key"
ID_TARGET, OOD_TARGET = 0.20, 0.80


def cli(state_dir: Path, *args: str) -> str:
    """``secdood-device ARGS`` in this process (one torch import for all devices)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), _device_dir(state_dir):
        code = device_cli(list(args))
    if code != 0:
        raise RuntimeError(f"secdood-device {' '.join(args)} exited with {code}")
    return out.getvalue()


@contextlib.contextmanager
def _device_dir(state_dir: Path):
    import os

    previous = os.environ.get("SECDOOD_DEVICE_DIR")
    os.environ["SECDOOD_DEVICE_DIR"] = str(state_dir)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["SECDOOD_DEVICE_DIR"]
        else:
            os.environ["SECDOOD_DEVICE_DIR"] = previous


def run_report(output: str, truth: list[int]) -> dict:
    """The CLI's JSON report plus the Energy AUROC from its per-clip lines."""
    lines = output.strip().splitlines()
    report = json.loads(lines[-1])
    scores = np.array([float(line.split()[2]) for line in lines[1 : 1 + report["clips"]]])
    labels = np.array(truth[: len(scores)])
    report["auroc"] = ood_metrics(scores[labels >= 0], scores[labels < 0])["auroc"]
    # the same scores judged with the model's own threshold (no personalised offset)
    flags = scores > report["threshold"]
    report["model_threshold_id_flagged_rate"] = float(flags[labels >= 0].mean())
    report["model_threshold_ood_flagged_rate"] = float(flags[labels < 0].mean())
    return report


def one_device(target: str, corruption: str, severity: int, seed: int, root: Path) -> dict:
    state, video = (
        root / f"{corruption}-{severity}-{seed}",
        root / f"{corruption}-{severity}-{seed}.mp4",
    )
    cli(state, "enroll", "--server", target, "--enrollment-key", ENROLL_KEY,
        "--name", state.name, "--corruption", corruption, "--severity", str(severity))  # fmt: skip
    cli(state, "download")
    cli(state, "simulate-camera", "--out", str(video), "--clips", str(STREAM_CLIPS),
        "--seed", str(100 + seed))  # fmt: skip
    truth = load_truth(video)
    assert truth is not None
    scored = ["run", "--source", str(video), "--json", "--quiet"]
    global_head = run_report(cli(state, *scored), truth)
    started = time.perf_counter()
    personalize_out = cli(state, "personalize", "--seed", str(seed))
    personalize_s = time.perf_counter() - started
    personal = run_report(cli(state, *scored, "--personalize"), truth)
    # the same device with Θ as the cloud sends it (no refinement on the window)
    cli(state, "personalize", "--seed", str(seed), "--no-refine")
    unrefined = run_report(cli(state, *scored, "--personalize"), truth)
    row = {
        "corruption": corruption,
        "severity": severity,
        "seed": seed,
        "global": global_head,
        "personalised": personal,
        "unrefined": unrefined,
        "personalize_seconds": personalize_s,
        "personalize_output": personalize_out.strip().splitlines(),
    }
    row["meets_targets"] = meets(personal)
    row["unrefined_meets_targets"] = meets(unrefined)
    return row


def meets(report: dict) -> bool:
    """Both newcomer targets on one ``run --json`` report."""
    return bool(report["id_flagged_rate"] <= ID_TARGET and report["ood_flagged_rate"] >= OOD_TARGET)


#: heads of the summary table: row key → label
HEAD_LABELS = {
    "global": "global",
    "personalised": "personalised (Θ refined on the window)",
    "unrefined": "personalised, Θ as sent (`--no-refine`)",
}


def throwaway_registry(folder: Path):
    """A registry holding copies of the registered base model and HyperNetwork."""
    settings = Settings()
    registry = open_registry(None, folder)
    with open_registry(settings.database_url, settings.data_dir) as source:
        for name in (BASE_MODEL, HYPERNETWORK):
            record = ensure_model(source, name)
            registry.register_model(
                name,
                record.method,
                record.config,
                record.metrics,
                source.artifacts.read_bytes(record.artifact_sha256),
            )
            print(f"{name} v{record.version} (sha256 {record.artifact_sha256[:12]}…)", flush=True)
            MODELS[name] = {"version": record.version, "sha256": record.artifact_sha256}
    return registry


#: the registered models the run used (filled by :func:`throwaway_registry`)
MODELS: dict[str, dict] = {}


def summarise(rows: list[dict]) -> list[list]:
    table = []
    for corruption, severity in dict.fromkeys((r["corruption"], r["severity"]) for r in rows):
        group = [r for r in rows if (r["corruption"], r["severity"]) == (corruption, severity)]
        for head in [h for h in HEAD_LABELS if h in group[0]]:
            personal = head != "global"
            means = {
                key: float(np.mean([r[head][key] for r in group]))
                for key in ("id_flagged_rate", "ood_flagged_rate", "auroc")
            }
            key = "meets_targets" if head == "personalised" else f"{head}_meets_targets"
            met = f"{sum(r.get(key, False) for r in group)}/{len(group)}"
            offset = (
                f"{np.mean([r[head]['energy_offset'] for r in group]):+.2f}" if personal else ""
            )
            model_threshold = ""
            if personal:
                id_rate, ood_rate = (
                    100 * np.mean([r[head][f"model_threshold_{k}_flagged_rate"] for r in group])
                    for k in ("id", "ood")
                )
                met_model = sum(
                    r[head]["model_threshold_id_flagged_rate"] <= ID_TARGET
                    and r[head]["model_threshold_ood_flagged_rate"] >= OOD_TARGET
                    for r in group
                )
                model_threshold = f"{id_rate:.1f} % / {ood_rate:.1f} % ({met_model}/{len(group)})"
            table.append(
                [
                    f"{corruption} {severity}",
                    HEAD_LABELS[head],
                    len(group),
                    f"{100 * means['id_flagged_rate']:.1f} %",
                    f"{100 * means['ood_flagged_rate']:.1f} %",
                    f"{means['auroc']:.3f}",
                    offset,
                    met if personal else "",
                    model_threshold,
                ]
            )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two pairs, one seed")
    parser.add_argument("--seeds", type=int, default=3, help=f"seeds per pair (≤ {len(SEEDS)})")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    pairs, seeds = (PAIRS[:2], SEEDS[:1]) if args.quick else (PAIRS, SEEDS[: args.seeds])
    started = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="secdood-newcomer-") as tmp:
        root = Path(tmp)
        registry = throwaway_registry(root / "cloud")
        settings = Settings(
            data_dir=root / "cloud", host="127.0.0.1", grpc_port=0, enrollment_key=ENROLL_KEY
        )
        server, port, _ = build_grpc_server(registry, settings)
        server.start()
        try:
            for corruption, severity in pairs:
                for seed in seeds:
                    row = one_device(f"127.0.0.1:{port}", corruption, severity, seed, root)
                    rows.append(row)
                    g, p = row["global"], row["personalised"]
                    print(
                        f"{corruption} {severity} seed {seed}: ID flagged "
                        f"{g['id_flagged_rate']:.2f} → {p['id_flagged_rate']:.2f}, "
                        f"OOD flagged {g['ood_flagged_rate']:.2f} → "
                        f"{p['ood_flagged_rate']:.2f}, AUROC {g['auroc']:.3f} → {p['auroc']:.3f}",
                        flush=True,
                    )
        finally:
            server.stop(grace=None).wait()
            registry.close()
    met = sum(r["meets_targets"] for r in rows)
    met_unrefined = sum(r["unrefined_meets_targets"] for r in rows)
    headers = [
        "camera", "head", "devices", "ID flagged", "OOD flagged", "AUROC (E)",
        "threshold offset", "targets met",
        "with the model's threshold instead: ID / OOD flagged (targets met)",
    ]  # fmt: skip
    table = markdown_table(headers, summarise(rows))
    results = {
        "quick": args.quick,
        "targets": {"id_flagged_rate_max": ID_TARGET, "ood_flagged_rate_min": OOD_TARGET},
        "devices": rows,
        "devices_meeting_targets": met,
        "devices_meeting_targets_unrefined": met_unrefined,
        "models": MODELS,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json("newcomer", results)
    print(table)
    print(
        f"{met}/{len(rows)} devices meet both targets after personalize "
        f"({met_unrefined}/{len(rows)} with Θ as sent)"
    )
    write_section(
        "newcomer",
        "The newcomer path: secdood-device run / personalize / run --personalize",
        f"{'Quick' if args.quick else 'Full'} run, {len(rows)} simulated devices "
        f"({STREAM_CLIPS}-clip stream each, 30 % OOD; seeds {list(seeds)}). Targets: ID clips "
        f"flagged ≤ {ID_TARGET:.0%}, OOD clips flagged ≥ {OOD_TARGET:.0%} after `personalize`. "
        f"Models: {BASE_MODEL} v{MODELS[BASE_MODEL]['version']}, {HYPERNETWORK} "
        f"v{MODELS[HYPERNETWORK]['version']} (sha256 {MODELS[HYPERNETWORK]['sha256'][:12]}). "
        "The personalised head is judged with the model's Energy threshold plus its Θ's "
        f"offset (quantile {THRESHOLD_QUANTILE} of the window's Energy under Θ as sent; "
        f"{RefinementSettings().offset_quantile} of the refined head's "
        f"{'cross-fitted' if RefinementSettings().cross_fitted_offset else 'own'} window "
        "scores; mean offset per camera in the table). "
        "The device refines Θ on its window (`device_client.head_refinement`); the same "
        "devices were also personalised with `--no-refine` (Θ as the cloud sends it). "
        f"Means per camera; **{met}/{len(rows)} devices meet both targets** "
        f"({met_unrefined}/{len(rows)} with Θ as sent).\n\n{table}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
