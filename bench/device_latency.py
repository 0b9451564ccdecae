"""Device side: where one clip's time goes, float vs int8, batch 1 and 16, on this CPU.

    python -m bench.device_latency [--quick] [--model FLOAT.pt]

Stages, timed separately per clip (median of several passes): **decode** (read
the clip's frames from an .mp4 with OpenCV and resize them, as the device's
video source does), **optical flow** (Farnebäck, ``shared.data.flow``),
**embedding** (both CNN streams → z, float or int8), **detector** (Energy score
and verdict on the logits), **personalised head** (logits ``z·kernel + bias``
from a Θ). Float and int8 side by side in one run; the int8 engine is the one
:func:`~shared.models.int8.fastest_engine` measures on this CPU, and every
engine's latency is listed too. The CPU model and its int8-relevant instruction
sets are printed: int8 speed depends on them (AVX-512 VNNI / AMX on recent
Xeons, AVX2 only on older x86, dot-product instructions on ARM), so a ratio
measured here holds for this CPU only.

The model is ``--model``, else the latest registered base model, else an
untrained stand-in of the default size (latency does not depend on weights).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bench.harness import untrained_base_bundle
from bench.report import markdown_table, write_json, write_section
from server.export import int8_payload
from shared.data.digit_actions import DigitActionsConfig, generate_split
from shared.data.flow import compute_flow_batch
from shared.data.tensors import flow_to_tensor, frames_to_tensor
from shared.data.video_io import iter_frames, resize_frames, write_video
from shared.hypernet import personalised_logits
from shared.model_names import BASE_MODEL as BASE_MODEL_NAME
from shared.models.checkpoint import ModelBundle, load_bundle
from shared.models.int8 import engine_latencies, fastest_engine, int8_bundle
from shared.pipeline import DEFAULT_DETECTOR, OODPipeline

BATCHES = (1, 16)
#: x86 / ARM CPU flags that decide int8 speed
INT8_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512vnni",
    "avx_vnni",
    "amx_int8",
    "asimddp",
    "i8mm",
)
REPEATS = {"full": 7, "quick": 3}


def cpu_description() -> tuple[str, list[str]]:
    """CPU model name and the int8-relevant instruction sets it reports (Linux /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and model in ("", platform.machine()):
                model = value.strip()
            if key in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    return model, [flag for flag in INT8_FLAGS if flag in flags]


def per_clip_ms(action: Callable[[], object], clips: int, repeats: int) -> float:
    """Median CPU ms per clip (this process's CPU clock: steady while other jobs share the
    cores; on an idle core it is the latency)."""
    times = []
    action()  # warm-up (allocations, weight packing)
    for _ in range(repeats):
        started = time.process_time()
        action()
        times.append(time.process_time() - started)
    return statistics.median(times) / clips * 1e3


def base_bundle(model: Path | None) -> tuple[ModelBundle, str]:
    if model is not None:
        return load_bundle(model), str(model)
    from server.registry import NotFoundError, open_registry
    from server.settings import Settings
    from shared.models.checkpoint import bundle_from_bytes

    settings = Settings()
    if settings.data_dir.exists():
        with open_registry(settings.database_url, settings.data_dir) as registry:
            try:
                record = registry.get_model(BASE_MODEL_NAME, None, "float")
                data = registry.artifacts.read_bytes(record.artifact_sha256)
                return bundle_from_bytes(data), f"{record.name} v{record.version}"
            except NotFoundError:
                pass
    return untrained_base_bundle(), "untrained stand-in (default size)"


def stage_times(
    bundle: ModelBundle, video: Path, clips: np.ndarray, batch: int, repeats: int
) -> dict[str, float]:
    """ms per clip of every stage for ``batch`` clips at a time."""
    config = bundle.config
    frames = clips[:batch]
    pipeline = OODPipeline(bundle)
    pipeline.detector(DEFAULT_DETECTOR)
    flow = compute_flow_batch(frames)
    rgb_t, flow_t = frames_to_tensor(frames), flow_to_tensor(flow)
    with torch.inference_mode():
        z = bundle.model.embed(rgb_t, flow_t)
    logits = z @ pipeline.head.weight.T + pipeline.head.bias
    theta = torch.randn(config.embed_dim * config.num_classes + config.num_classes)
    frames_needed = batch * config.n_frames

    def decode() -> list[np.ndarray]:
        out = []
        for index, frame in enumerate(iter_frames(video)):
            if index == frames_needed:
                break
            out.append(resize_frames(frame[None], config.size)[0])
        return out

    def embed() -> torch.Tensor:
        with torch.inference_mode():
            return bundle.model.embed(frames_to_tensor(frames), flow_to_tensor(flow))

    def detect() -> object:
        return pipeline.score_features(z, DEFAULT_DETECTOR, logits=logits)

    return {
        "decode": per_clip_ms(decode, batch, repeats),
        "optical_flow": per_clip_ms(lambda: compute_flow_batch(frames), batch, repeats),
        "embedding": per_clip_ms(embed, batch, repeats),
        "detector": per_clip_ms(detect, batch, repeats),
        "personalised_head": per_clip_ms(
            lambda: personalised_logits(z, theta, config.num_classes), batch, repeats
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--model", type=Path, default=None, help="float base-model artifact")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    repeats = REPEATS[mode]
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cpu, flags = cpu_description()
    print(f"CPU: {cpu}; int8 instructions: {', '.join(flags) or 'none of ' + str(INT8_FLAGS)}")

    bundle, source = base_bundle(args.model)
    config = bundle.config
    data = DigitActionsConfig(
        n_frames=config.n_frames,
        size=config.size,
        train_per_class=3,
        val_per_class=1,
        test_per_class=3,
        ood_per_action=1,
        far_count=1,
    )
    clips = generate_split("test", data).frames[: max(BATCHES)]
    calibration = generate_split("train", data).frames
    payload = int8_payload(
        bundle, frames_to_tensor(calibration), flow_to_tensor(compute_flow_batch(calibration))
    )
    engines = {batch: engine_latencies(payload, batch) for batch in BATCHES}
    chosen = fastest_engine(payload)
    quantised = int8_bundle(payload, engine=chosen)
    print(f"int8 engine chosen by measurement: {chosen}; latencies {engines}", flush=True)

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="secdood-bench-latency-") as temp:
        video = write_video(Path(temp) / "clips.mp4", clips.reshape(-1, *clips.shape[2:]))
        for batch in BATCHES:
            for name, model in (("float", bundle), ("int8", quantised)):
                results[f"{name}_b{batch}"] = stage_times(model, video, clips, batch, repeats)
                print(f"  {name} batch {batch}: {results[f'{name}_b{batch}']}", flush=True)

    stages = list(next(iter(results.values())))
    rows = []
    for key, times in results.items():
        rows.append([key, *(f"{times[s]:.3f}" for s in stages), f"{sum(times.values()):.3f}"])
    ratios = {
        batch: results[f"int8_b{batch}"]["embedding"] / results[f"float_b{batch}"]["embedding"]
        for batch in BATCHES
    }
    write_json(
        "device_latency",
        {
            "mode": mode,
            "model": source,
            "cpu": cpu,
            "int8_instructions": flags,
            "engine_latencies_s": {str(k): v for k, v in engines.items()},
            "chosen_engine": chosen,
            "stages_ms_per_clip": results,
            "int8_over_float_embedding": {str(k): v for k, v in ratios.items()},
        },
    )
    engine_rows = [
        [engine, *(f"{engines[b][engine] * 1e3 / b:.3f}" for b in BATCHES)]
        for engine in engines[BATCHES[0]]
    ]
    summary = (
        f"CPU: **{cpu}**, int8-relevant instructions: {', '.join(flags) or 'none'}. Model: "
        f"{source}. torch 1 thread. These numbers hold for this CPU only: int8 speed depends "
        f"on the instruction sets above, which is why the engine is chosen by measurement "
        f"at load (`engine='auto'`). The machine was shared with other jobs: absolute times "
        f"are noisy; float and int8 were measured side by side.\n\n"
        f"CPU ms per clip by stage (median of {repeats}; OpenCV and torch limited to one "
        f"thread, so on an idle core this is the latency):\n\n"
        f"{markdown_table(['model, batch', *stages, 'total'], rows)}\n\n"
        f"int8 / float embedding latency on this CPU: "
        + ", ".join(f"batch {b}: {r:.2f}×" for b, r in ratios.items())
        + f"\n\nint8 embedding CPU ms per clip by engine, engines taking turns (chosen: "
        f"{chosen}):\n\n"
        + markdown_table(["engine", *(f"batch {b}" for b in BATCHES)], engine_rows)
    )
    write_section("device_latency", "Device latency per clip, by stage", summary)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
