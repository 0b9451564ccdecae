"""``secdood-device run``: score a stream with the global or the personalised head."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from device_client.commands.common import (
    DEFAULT_MODEL,
    PROG,
    CliError,
    connect,
    model_path,
    model_variant,
    personal_embedding,
)
from device_client.gateway_client import GatewayClient, ServerUnreachableError
from device_client.state import DeviceState
from shared.embedding_adaptation import PLAIN, EmbeddingAdaptation

#: clips scored per forward pass; small enough for a Raspberry Pi's memory
BATCH_CLIPS = 16


def _batches(clips: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    for clip in clips:
        batch.append(clip)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def run(args: argparse.Namespace, state: DeviceState) -> int:
    # Imported here: torch and the model code are only needed to score.
    from tqdm import tqdm

    from device_client.runtime import DeviceRuntime
    from device_client.sources import ClipSource
    from shared.ood.registry import DETECTORS

    if not args.source.startswith("camera:") and not Path(args.source).exists():
        raise CliError(f"video file not found: {args.source}")
    if args.detector not in DETECTORS:
        raise CliError(f"unknown detector {args.detector!r}; choose one of {sorted(DETECTORS)}")
    path = model_path(args, state)
    int8 = True if args.int8 else None
    if args.personalize:  # the embeddings H reads: LeanTTA unless --adapt none
        embedding = personal_embedding(args.adapt)
        runtime = DeviceRuntime.for_embedding(path, embedding, int8=int8, engine=args.engine)
        args.adapt = embedding.mode
    else:
        embedding, args.adapt = PLAIN, args.adapt or "none"
        runtime = DeviceRuntime.from_artifact(
            path, adapt=args.adapt, adapt_layers=args.adapt_layers, int8=int8, engine=args.engine
        )
    config = runtime.bundle.config
    source = ClipSource(args.source, config.n_frames, config.size)
    source.check()  # a missing camera or a bad file fails here, before any output
    truth = truth_of(source)
    head = _personal_head(args, state, runtime, path, embedding) if args.personalize else None

    print(f"{'clip':>5}  {'label':<16} {'ood_score':>10}  {'verdict':<8}head")
    flags: list[bool] = []
    last_threshold: float | None = None  # the personalised head's moves with each Θ
    seconds = 0.0
    progress = tqdm(
        desc=f"{source.describe()} [{args.adapt}{', int8' if runtime.is_int8 else ''}]",
        unit="clip",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=args.quiet,
    )
    # LeanTTA is per clip (a batch gives each clip's own result); ZO learns clip by clip
    batch_size = 1 if source.is_camera or args.adapt == "zo" else BATCH_CLIPS
    try:
        for batch in _batches(iter(source), batch_size):
            start = time.perf_counter()
            verdicts = runtime.score_clips(batch, detector=args.detector, head=head)
            seconds += time.perf_counter() - start
            used = head.describe() if head is not None else "global"
            for label, score, is_ood in zip(
                verdicts.labels, verdicts.ood_score.tolist(), verdicts.is_ood.tolist(), strict=True
            ):
                progress.write(
                    f"{len(flags):>5}  {label:<16} {score:>10.4f}  "
                    f"{'OOD' if is_ood else 'ID':<8}{used}",
                    file=sys.stdout,
                )
                flags.append(bool(is_ood))
                last_threshold = verdicts.threshold
            progress.update(len(batch))
            progress.set_postfix(
                fps=f"{len(flags) * config.n_frames / seconds:.0f}", ood=sum(flags)
            )
    except KeyboardInterrupt:
        source.end_reason = "interrupted"
    finally:
        progress.close()
    n_clips, n_ood = len(flags), sum(flags)
    if n_clips == 0:
        raise CliError(f"{source.describe()}: no complete clip before {source.end_reason}")
    threshold = runtime.pipeline.threshold(args.detector)
    mean_ms = 1000.0 * seconds / n_clips
    print(
        f"summary: {n_clips} clips, {n_ood} OOD ({100.0 * n_ood / n_clips:.1f} %), "
        f"detector {args.detector} ({_threshold_note(threshold, last_threshold)}), "
        f"{mean_ms:.1f} ms per clip, "
        f"adapt {args.adapt}{', int8' if runtime.is_int8 else ''}, "
        f"head {head.describe() if head is not None else 'global'}"
        f"{_guard_note(head)}; {source.end_reason}"
    )
    if head is not None:
        head.close()
    if args.report:
        client, _identity = connect(state)
        info = state.load_model_info(DEFAULT_MODEL, "int8" if args.int8 else args.variant) or {}
        try:
            with client:
                client.report_telemetry(
                    clips_scored=n_clips,
                    ood_flagged=n_ood,
                    mean_latency_ms=mean_ms,
                    frames_per_second=n_clips * config.n_frames / seconds if seconds > 0 else 0.0,
                    model_sha256=info.get("sha256", "") if not args.model else "",
                    metrics=head.telemetry() if head is not None else None,
                )
            print("telemetry reported")
        except ServerUnreachableError:  # the scores stand; the report waits for the next run
            print(f"{PROG}: telemetry not sent: {client.target} unreachable", file=sys.stderr)
    if args.json:
        report = _run_report(args, flags, truth, head, mean_ms, threshold)
        report["last_threshold"] = last_threshold
        print(json.dumps(report))
    return 0


def _threshold_note(threshold: float, last: float | None) -> str:
    """The summary line's threshold: the model's, and the last one used when it differs
    (the personalised head's Energy threshold moves with each Θ)."""
    if last is None or last == threshold:
        return f"threshold {threshold:.4f}"
    return f"threshold {threshold:.4f}, personalised {last:.4f} at the end"


def _guard_note(head) -> str:
    """The summary line's note on guard fallbacks (empty when the guard never fell back)."""
    fallbacks = head.clips_guard_fallback if head is not None else 0
    return f", guard fell back on {fallbacks} clips" if fallbacks else ""


def truth_of(source) -> list[int] | None:
    """Ground truth of a simulated-camera file or folder (None when any file lacks it)."""
    from device_client.simulated_camera import load_truth

    labels: list[int] = []
    for path in source.files:
        truth = load_truth(path)
        if truth is None:
            return None
        labels += truth
    return labels or None


def _run_report(args, flags: list[bool], truth, head, mean_ms: float, threshold: float) -> dict:
    """The one JSON object ``run --json`` prints last (scripts check a device with it)."""
    import torch

    from device_client.personal_head import flag_rates

    report = {
        "clips": len(flags),
        "ood_flagged": sum(flags),
        "head": "personalised" if head is not None else "global",
        **flag_rates(flags, truth),
        "detector": args.detector,
        "threshold": threshold,
        "mean_ms_per_clip": mean_ms,
        "adapt": args.adapt,
        "int8": bool(args.int8),
        # the quantised engine that ran the int8 kernels (qnnpack on ARM, x86/fbgemm here)
        "engine": torch.backends.quantized.engine if args.int8 else None,
    }
    if head is not None:
        p = head.personalizer
        report |= {
            "theta_status": p.theta_status,
            "stale": p.stale,
            "hypernet_version": p.hypernet.version if p.hypernet else None,
            "refreshes": p.refreshes,
            "clips_global_head": head.clips_global,
            "guard": head.guard_report(),
            "energy_offset": p.energy_offset,
            "threshold_quantile": p.threshold_quantile,
            # Θ refined on the window by the device (device_client.head_refinement)
            "refined": p.refined,
            # the window mean's distance from H's training devices (shared.familiarity) and
            # whether Θ therefore classifies while the refined head scores
            "familiarity": p.snapshot.refined.familiarity if p.refined else None,
            "theta_classifies": bool(p.refined and p.head.classify_with_cloud),
        }
    return report


def _personal_head(args, state: DeviceState, runtime, path: Path, embedding):
    """The personalised head for ``run --personalize`` (cached Θ at once, refreshed by drift),
    guarded by the global head (see :mod:`device_client.head_guard`)."""
    from device_client.head_guard import CONFIDENCE_SLACK, HeadGuard
    from device_client.keyring import DeviceKeyring
    from device_client.personal_head import PersonalHead, reference_energy

    config = runtime.bundle.config
    fused = runtime.bundle.model.fused_head

    identity = state.load_identity()
    keyring = DeviceKeyring(state)
    client = GatewayClient(identity.server, token=state.load_token(), root_cert=identity.root_cert)
    personalizer = keyring.personalizer(
        client,
        identity.server,
        identity.device_id,
        config.embed_dim,
        config.num_classes,
        model_key=model_key(args, state, path, embedding),
        window=args.window,
        min_window=args.window,
        max_age_s=args.theta_max_age,
        reference_energy=reference_energy(runtime.bundle),
        embedding_kind=embedding.key,
    )
    guard = HeadGuard(fused.weight.detach(), fused.bias.detach(), confidence_slack=CONFIDENCE_SLACK)
    energy_threshold = runtime.bundle.thresholds.get("energy")
    return PersonalHead(personalizer, keyring, guard=guard, energy_threshold=energy_threshold)


def model_key(args, state: DeviceState, path: Path, embedding: EmbeddingAdaptation) -> str:
    """Which base model, run how, a cached Θ belongs to: name and version when downloaded
    (float and int8 of one version share their Θ), else the artifact's sha256; then the
    embedding kind unless plain (so a Θ of plain embeddings is never restored for LeanTTA)."""
    import hashlib

    info = None if args.model else state.load_model_info(DEFAULT_MODEL, model_variant(args))
    if info and "version" in info:
        key = f"{info.get('name', DEFAULT_MODEL)} v{info['version']}"
    else:
        key = hashlib.sha256(path.read_bytes()).hexdigest()
    return key if embedding == PLAIN else f"{key} · {embedding.key}"
