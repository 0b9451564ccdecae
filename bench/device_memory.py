"""Peak memory of device jobs, each in a fresh interpreter (``bench/device.py``'s ``memory``).

    python -m bench.device_memory JOB FLOAT.pt INT8.pt INPUTS.pt   # one job; prints KiB

Every job runs on the same saved clips (no dataset loading inside the job, so the peak is the
job's own); peak RSS is ``VmHWM`` (see :func:`device_client.measure.peak_rss_kib`).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.device_shift import tent_error, zo_stream_error
from device_client.bn_baselines import no_adaptation
from device_client.measure import clip_subset, clip_tensors, error_rate, peak_rss_kib
from device_client.runtime import ZOStreamConfig, load_model

ROOT = Path(__file__).resolve().parents[1]
MEMORY_JOBS = ("inference", "leantta", "zo", "tent", "inference_int8", "leantta_int8")
#: (window, eval_batch) of the online ZO entropy adaptation measured besides the default.
ZO_MEMORY_SWEEP = ((16, 16), (16, 8), (16, 4), (16, 2), (16, 1), (8, 8), (8, 4))
TENT_BATCH = 16


def zo_job_name(window: int, eval_batch: int) -> str:
    """Memory job name of online ZO with ``window`` clips evaluated ``eval_batch`` at a time."""
    return f"zo_w{window}_b{eval_batch}"


def parse_zo_job(job: str) -> ZOStreamConfig | None:
    """``zo_w{window}_b{eval_batch}`` -> its config (other settings default); None otherwise."""
    parts = job.split("_")
    if len(parts) != 3 or parts[0] != "zo" or parts[1][:1] != "w" or parts[2][:1] != "b":
        return None
    if not (parts[1][1:].isdigit() and parts[2][1:].isdigit()):
        return None
    return ZOStreamConfig(window=int(parts[1][1:]), eval_batch=int(parts[2][1:]))


def memory_job(job: str, float_path: Path, int8_path: Path, inputs_path: Path) -> int:
    """Run one job in this process on saved inputs and return its max RSS in KiB (Linux).

    Jobs: :data:`MEMORY_JOBS` and ``zo_w{window}_b{eval_batch}`` (online ZO with that window
    and loss-evaluation batch; ``"zo"`` is the default :class:`ZOStreamConfig`).
    """
    torch.set_num_threads(1)
    zo_config = parse_zo_job(job)
    if job not in MEMORY_JOBS and zo_config is None:
        raise ValueError(
            f"unknown memory job {job!r}; choose one of {MEMORY_JOBS} or zo_w<window>_b<batch>"
        )
    saved = torch.load(inputs_path, weights_only=True)
    rgb, flow, labels = saved["rgb"], saved["flow"], saved["labels"]
    if job in ("inference", "leantta", "inference_int8", "leantta_int8"):
        path = int8_path if job.endswith("int8") else float_path
        model = load_model(path, "leantta" if job.startswith("leantta") else "none").model
        error_rate(model, rgb, flow, labels, 1)
    elif job == "zo" or zo_config is not None:
        zo_stream_error(float_path, rgb, flow, labels, zo_config)
    elif job == "tent":
        tent_error(no_adaptation(load_model(float_path).model), rgb, flow, labels, TENT_BATCH)
    return peak_rss_kib()


def memory_section(
    float_path: Path, int8_path: Path, n_clips: int, repeats: int = 1
) -> dict[str, Any]:
    """Each job in a fresh interpreter on the same saved clips; the jobs run round-robin
    ``repeats`` times and the median peak is kept. Also sweeps the online ZO window /
    loss-evaluation batch (:data:`ZO_MEMORY_SWEEP`)."""
    rgb, flow, labels = clip_tensors(clip_subset("test", n_clips, 3))
    jobs = [*MEMORY_JOBS, *(zo_job_name(w, b) for w, b in ZO_MEMORY_SWEEP)]
    samples: dict[str, list[float]] = {job: [] for job in jobs}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.pt"
        torch.save({"rgb": rgb, "flow": flow, "labels": labels}, inputs)
        for _ in range(repeats):
            for job in jobs:
                command = [sys.executable, "-m", "bench.device_memory", job]
                command += [str(float_path), str(int8_path), str(inputs)]
                out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
                samples[job].append(int(out.stdout.strip().splitlines()[-1]) / 1024.0)  # MiB
    peaks = {job: statistics.median(values) for job, values in samples.items()}
    ratio = {
        job: peaks[job] / peaks["inference"]
        for job in jobs
        if job not in ("inference", "inference_int8", "leantta_int8")
    }
    ratio["leantta_int8"] = peaks["leantta_int8"] / peaks["inference_int8"]
    default = ZOStreamConfig()
    return {
        "max_rss_mib": peaks,
        "ratio_to_inference": ratio,
        "clips": n_clips,
        "repeats": repeats,
        "tent_batch": TENT_BATCH,
        "zo_default": {"window": default.window, "eval_batch": default.eval_batch},
    }


if __name__ == "__main__":  # one memory job in a fresh process: JOB FLOAT INT8 INPUTS
    print(memory_job(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])))
