"""``secdood-device personalize``: a window of clips → the cloud's HyperNetwork → cached Θ."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from device_client.commands.common import PROG, CliError, model_path, personal_embedding
from device_client.commands.run import model_key, truth_of
from device_client.gateway_client import GatewayClient
from device_client.state import DeviceIdentity, DeviceState


def personalize(args: argparse.Namespace, state: DeviceState) -> int:
    """Observe a window of clips, refresh Θ with the cloud's HyperNetwork, show before/after."""

    from device_client.keyring import DeviceKeyring, PersonalizationSettings
    from device_client.personal_head import reference_energy
    from device_client.runtime import DeviceRuntime
    from shared.channel_importance import channel_count, check_alpha

    # Every check that needs no network comes first, so a bad call changes nothing.
    identity = state.load_identity()
    try:
        alpha = check_alpha(args.alpha)
    except (TypeError, ValueError) as error:
        raise CliError(str(error)) from None
    if args.clips < 2:
        raise CliError(
            f"--clips must be at least 2 (the window Θ is generated from), got {args.clips}"
        )
    path = model_path(args, state)
    settings = PersonalizationSettings(
        alpha, args.mode, encrypted=not args.plaintext, refine=not args.no_refine
    )
    keyring = DeviceKeyring(state)
    if args.new_keys:
        keyring.new_keys()  # replaces a damaged key file once the cloud has the new public part
    elif settings.encrypted:
        keyring.context()  # loads the keys (a damaged key file fails here) or makes new ones
    embedding = personal_embedding(args.adapt)
    runtime = DeviceRuntime.for_embedding(path, embedding, int8=True if args.int8 else None)
    config = runtime.bundle.config
    frames, truth, where = _personalize_window(args, identity, config)
    before = runtime.score_clips(frames, detector=args.detector)
    z = before.features.double().numpy()

    client = GatewayClient(identity.server, token=state.load_token(), root_cert=identity.root_cert)
    with client:
        personalizer = keyring.personalizer(
            client,
            identity.server,
            identity.device_id,
            config.embed_dim,
            config.num_classes,
            model_key=model_key(args, state, path, embedding),
            settings=settings,
            window=max(len(z), 2),
            reference_energy=reference_energy(runtime.bundle),
            embedding_kind=embedding.key,
        )
        started = time.perf_counter()
        if settings.mode == "per_device":
            personalizer.observe(z)
            personalizer.refresh("secdood-device personalize")
            logits = personalizer.head_logits(z)  # refined on this window when large enough
        else:
            logits = personalizer.logits(z)
        first_s = time.perf_counter() - started
        uploaded = personalizer.transport.uploads > 0
        per_request = first_s / personalizer.stats.requests
        if uploaded and settings.mode == "per_device":
            started = time.perf_counter()  # also time a round trip without the upload
            personalizer.refresh("secdood-device personalize")
            per_request = time.perf_counter() - started
    keyring.save_settings(settings)
    guard = _guard(runtime, z, personalizer.head) if settings.mode == "per_device" else None
    threshold = _personal_threshold(runtime, args.detector, personalizer, guard)
    after = runtime.pipeline.score_features(
        before.features, args.detector, logits=logits.float(), threshold=threshold
    )

    print(f"window: {len(frames)} clips from {where}; embeddings: {embedding.describe()}")
    upload = keyring.upload_record() or {}
    if not settings.encrypted:
        print("plaintext mode: the selected channels were sent unencrypted (trusted network)")
    else:
        size = upload.get("size_bytes", 0) / 1e6
        print(
            f"public CKKS context: {'uploaded now' if uploaded else 'already with the cloud'} "
            f"({size:.1f} MB); the secret key stays in {keyring.he_dir}"
        )
    for name, verdicts in (("before (global head)", before), ("after (personalised)", after)):
        print(f"{name:<21} OOD-flag rate {_rate_line(verdicts.is_ood.tolist(), truth)}")
    stats, hypernet = personalizer.stats, personalizer.hypernet
    assert hypernet is not None  # set by the first successful request
    channels = channel_count(alpha, config.embed_dim)
    print(
        f"theta: {hypernet.name} v{hypernet.version} (sha256 {hypernet.sha256[:12]}…), "
        f"alpha {alpha} ({channels} of {config.embed_dim} channels "
        f"{'encrypted' if settings.encrypted else 'sent'}), {settings.mode}"
    )
    print(
        f"round trip {per_request:.2f} s per request "
        f"(cloud {stats.he_seconds / stats.requests:.2f} s); "
        f"{stats.bytes_up / stats.requests / 1024:.0f} KiB up, "
        f"{stats.bytes_down / stats.requests / 1024:.0f} KiB down per request"
        + (f"; first request with the upload {first_s:.2f} s" if uploaded else "")
    )
    if settings.mode == "per_device":
        print(_refinement_line(personalizer, len(z)))
    if guard is not None:
        print(_guard_line(guard))
        print(_threshold_line(runtime, args.detector, personalizer, threshold))
        print(f"cached for offline use: `{PROG} run --personalize --source ...` scores with it")
    return 0


def _refinement_line(personalizer, clips: int) -> str:
    """Whether Θ was refined on the window (device_client.head_refinement) and how."""
    settings = personalizer.refinement
    if settings is None:
        return "refinement: off (the cloud's theta is used as sent)"
    if not personalizer.refined:
        return (
            f"refinement: not yet ({clips} window clips, needs {settings.min_window}); "
            "the cloud's theta is used as sent"
        )
    assert personalizer.snapshot is not None and personalizer.snapshot.refined is not None
    refined = personalizer.snapshot.refined
    if refined.familiarity is None:
        roles = "the refined head classifies and scores (no familiarity reference from the cloud)"
    elif refined.head.classify_with_cloud:
        roles = (
            f"a familiar camera (ratio {refined.familiarity:.2f} <= "
            f"{personalizer.familiar_ratio:g}): the cloud's theta classifies, the refined head "
            "scores"
        )
    else:
        roles = (
            f"an unfamiliar camera (ratio {refined.familiarity:.2f}): the refined head "
            "classifies and scores"
        )
    return (
        f"refinement: theta refined on {refined.window_clips} window clips without labels "
        f"({settings.iterations} EM iterations, shrinkage {settings.shrinkage}); {roles}"
    )


def _guard(runtime, z: np.ndarray, theta):
    """The device guard of ``run --personalize``, checked on this window and Θ."""
    from device_client.head_guard import CONFIDENCE_SLACK, HeadGuard

    fused = runtime.bundle.model.fused_head
    guard = HeadGuard(fused.weight.detach(), fused.bias.detach(), confidence_slack=CONFIDENCE_SLACK)
    guard.refresh(z, theta)
    return guard


def _personal_threshold(runtime, detector: str, personalizer, guard) -> float | None:
    """The verdict threshold ``run --personalize`` uses for this Θ (None: the model's):
    the Energy threshold plus Θ's offset, unless the guard would serve the global head."""
    offset = personalizer.energy_offset
    trusted = guard is not None and guard.state is not None and guard.state.trusted
    if detector != "energy" or offset is None or not trusted:
        return None
    return runtime.pipeline.threshold("energy") + offset


def _threshold_line(runtime, detector: str, personalizer, threshold: float | None) -> str:
    """The personalised head's verdict threshold, as ``run --personalize`` will use it."""
    offset = personalizer.energy_offset
    base = runtime.pipeline.threshold(detector)
    if threshold is None:
        why = "no offset" if offset is None else "the guard would serve the global head"
        why = f"detector {detector}" if detector != "energy" else why
        return f"threshold: {detector} {base:.4f}, the model's ({why})"
    return (
        f"threshold: energy {threshold:.4f} for the personalised head (the model's {base:.4f} "
        f"{offset:+.4f}: quantile {personalizer.threshold_quantile} of the window's Energy "
        "under theta vs of clean ID under the global head)"
    )


def _guard_line(guard) -> str:
    """What the device guard of ``run --personalize`` makes of this Θ on this window."""
    from device_client.head_guard import CONFIDENCE_SLACK

    state = guard.state
    verdict = "keeps the personalised head" if state.trusted else "would serve the global head"
    return (
        f"guard: {verdict} ({state.signal} on the window {state.score_personalised:.3f} "
        f"personalised vs {state.score_global:.3f} global, slack {CONFIDENCE_SLACK})"
    )


def _rate_line(flags: list[bool], truth: list[int] | None) -> str:
    from device_client.personal_head import flag_rates

    line = f"{100.0 * sum(flags) / len(flags):5.1f} % ({sum(flags)}/{len(flags)})"
    rates = flag_rates(flags, truth)
    if rates["id_flagged_rate"] is not None and rates["ood_flagged_rate"] is not None:
        line += (
            f"; of the ID clips {100 * rates['id_flagged_rate']:.1f} %, "
            f"of the OOD clips {100 * rates['ood_flagged_rate']:.1f} %"
        )
    return line


def _personalize_window(args, identity: DeviceIdentity, config):
    """Clips [N, T, H, W, 3] to personalise on, their truth (if known) and where they came from.

    Default source: the enrolled camera profile's simulated stream, or camera 0 on a
    device enrolled without one.
    """
    from device_client.simulated_camera import simulated_stream
    from device_client.sources import ClipSource

    profile = identity.profile or {}
    if args.source is None and profile.get("corruption"):
        corruption, severity = profile["corruption"], int(profile.get("severity") or 0)
        frames, truth = simulated_stream(args.clips, corruption, severity, 0.3, seed=args.seed)
        labels = [int(t["label"]) for t in truth]
        return frames, labels, f"this device's simulated camera ({corruption} severity {severity})"
    spec = args.source or "camera:0"
    if not spec.startswith("camera:") and not Path(spec).exists():
        raise CliError(f"video file not found: {spec}")
    source = ClipSource(spec, config.n_frames, config.size)
    source.check()
    clips = []
    for clip in source:
        clips.append(clip)
        if len(clips) == args.clips:
            break
    if len(clips) < 2:
        raise CliError(f"{source.describe()}: fewer than 2 clips to personalise on")
    truth = truth_of(source)
    return np.stack(clips), truth[: len(clips)] if truth else None, source.describe()
