"""Reliability under load: 100 devices at once, stalled streams, fuzzing — on loopback.

    python -m bench.reliability [--quick] [--devices N] [--fuzz] [--model PATH]

Starts the service (REST + gRPC) in a child process on a temporary data
directory (:func:`bench.service.serve`) with a bounded memory configuration,
registers the base model and a HyperNetwork of its dimensions (randomly
initialised: this measures the service, not accuracy), then:

* **stall**: holds 2 × ``grpc_max_data_streams`` uploads open that send one
  chunk and go silent, and times gRPC health checks and enrolments meanwhile;
* **load**: ``--devices`` simulated devices (threads, each its own gRPC
  channel) at once: enrol → upload the public CKKS context → personalise one
  encrypted embedding, while REST clients score feature rows on
  ``/v2/models/secdood_base/infer``. Overload refusals are retried (the device
  client's jittered backoff; ``Retry-After`` for REST). Reported: devices
  completed, requests lost, retries, p50/p95 per phase, and the server's peak
  RSS (``VmHWM`` of the child) against its configured bound;
* **fuzz** (``--fuzz``): runs the long schemathesis and gRPC fuzz tests and
  records their case counts (they fail on any 5xx, schema violation or crash).

Contexts use N = 4096 (a few MB each, so 100 uploads stay cheap on disk); ten
key sets are generated and shared round-robin by the devices (key generation is
client work, not server load). Writes bench/results/reliability.json and the
"reliability" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.report import RESULTS, markdown_table, write_json, write_section
from bench.service import bench_settings, infer_body, load_artifact, register_artifact, serve
from device_client.gateway_client import GatewayClient
from device_client.retry import RetryPolicy
from server.ckks_matmul import EvaluationKeys, parsed_bytes_limit
from server.gateway.server import MAX_MESSAGE_BYTES
from server.personalization import MAX_ENCODED_ROWS_BYTES
from server.settings import Settings
from shared.he import CKKSParams, create_context, encrypt_selected, public_context_bytes
from shared.hypernet import HyperNetwork, HyperNetworkConfig, hypernet_state
from shared.model_names import HYPERNETWORK
from shared.models.checkpoint import bundle_from_bytes
from shared.rpc import gateway_pb2, gateway_pb2_grpc

#: small ring for the load test: a public context of a few MB
LOAD_PARAMS = CKKSParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(40, 20, 40), scale_bits=20)
KEY_SETS = 10
ALPHA = 0.25
#: memory configuration of the server under test (the RSS bound is computed from it);
#: the cache holds about 30 parsed N = 4096 contexts (12.4 MiB each by its estimate)
CACHE_BYTES = 384 * 1024 * 1024
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
DATA_STREAMS = 16
REST_CLIENTS = 4
#: what the serving process holds per open gRPC connection at most before its calls are
#: admitted (HTTP/2's initial flow-control window); not capped by a setting
GRPC_WINDOW_BYTES = 64 * 1024
#: the whole load phase must finish within this (seconds); unfinished devices count as lost
LOAD_DEADLINE_S = 900.0
DEVICE_RETRY = RetryPolicy(attempts=30, base_s=0.25, max_s=4.0)
REST_ATTEMPTS = 30


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50_ms": float("nan"), "p95_ms": float("nan")}
    array = np.asarray(values) * 1e3
    return {
        "n": len(values),
        "p50_ms": float(np.percentile(array, 50)),
        "p95_ms": float(np.percentile(array, 95)),
    }


def _server_pid() -> int:
    children = [p for p in multiprocessing.active_children() if p.name == "service"]
    if len(children) != 1:
        raise RuntimeError(f"expected one service child process, found {children}")
    return children[0].pid


def _rss_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def _register_hypernetwork(data_dir: Path, embed_dim: int, num_classes: int) -> None:
    import io

    from server.registry import open_registry

    torch.manual_seed(0)
    model = HyperNetwork(HyperNetworkConfig(embed_dim, num_classes)).eval()
    buffer = io.BytesIO()
    torch.save(hypernet_state(model), buffer)
    with open_registry(None, data_dir) as registry:
        registry.register_model(HYPERNETWORK, HYPERNETWORK, {}, {}, buffer.getvalue())


# -- stall ------------------------------------------------------------------------------------


def run_stall(grpc_target: str, enrollment_key: str, probes: int) -> dict[str, Any]:
    """2 × the data-stream cap of silent uploads; health and enrolment timed meanwhile."""
    import hashlib

    release = threading.Event()
    payload = b"s" * 4096

    def silent():
        yield gateway_pb2.ContextChunk(
            sha256=hashlib.sha256(payload).hexdigest(), total_bytes=len(payload), data=b"s"
        )
        release.wait(60)

    enrol_meta = (("x-secdood-enrollment-key", enrollment_key),)
    with grpc.insecure_channel(grpc_target) as channel:
        stub = gateway_pb2_grpc.DeviceGatewayStub(channel)
        devices = DATA_STREAMS  # two streams each: the per-device cap
        tokens = [
            stub.Enroll(gateway_pb2.EnrollRequest(name=f"staller-{i}"), metadata=enrol_meta).token
            for i in range(devices)
        ]
        calls = [
            stub.UploadContext.future(
                silent(), metadata=(("authorization", f"Bearer {tokens[i % devices]}"),)
            )
            for i in range(2 * DATA_STREAMS)
        ]
        time.sleep(1.0)
        with grpc.insecure_channel(grpc_target) as probe_channel:
            health = health_pb2_grpc.HealthStub(probe_channel)
            probe_stub = gateway_pb2_grpc.DeviceGatewayStub(probe_channel)
            health_s, enrol_s = [], []
            for index in range(probes):
                started = time.perf_counter()
                health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                health_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                probe_stub.Enroll(
                    gateway_pb2.EnrollRequest(name=f"probe-{index}"), metadata=enrol_meta
                )
                enrol_s.append(time.perf_counter() - started)
        refused = sum(
            1 for call in calls if call.done() and call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        release.set()
        for call in calls:
            try:
                call.result(timeout=30)
            except grpc.RpcError:
                pass
    return {
        "stalled_streams": 2 * DATA_STREAMS,
        "stream_cap": DATA_STREAMS,
        "refused_at_once": refused,
        "health": {**_percentiles(health_s), "max_ms": 1e3 * max(health_s)},
        "enrol": {**_percentiles(enrol_s), "max_ms": 1e3 * max(enrol_s)},
    }


# -- load -------------------------------------------------------------------------------------


class _Device:
    """One simulated device's run: enrol → upload → personalise; phase times and retries."""

    def __init__(self, index: int, target: str, key: str, keys: list[Any], embed_dim: int):
        self.index, self.target, self.key = index, target, key
        self.context = keys[index % len(keys)]
        self.public = public_context_bytes(self.context)
        self.embed_dim = embed_dim
        self.times: dict[str, float] = {}
        self.retries = 0
        self.enrol_retries = 0
        self.error: str | None = None

    def run(self) -> None:
        rng = np.random.default_rng(self.index)
        try:
            with GatewayClient(self.target, retry=DEVICE_RETRY, timeout_s=120) as client:
                started = time.perf_counter()
                client.enroll(self.key, f"load-{self.index}", {"hardware": "bench"})
                self.times["enrol"] = time.perf_counter() - started
                self.enrol_retries = client.retries
                started = time.perf_counter()
                client.upload_context(self.public)
                self.times["upload"] = time.perf_counter() - started
                z = rng.random(self.embed_dim)
                count = max(1, round(ALPHA * self.embed_dim))
                indices = np.sort(rng.choice(self.embed_dim, count, replace=False))
                started = time.perf_counter()
                reply = client.personalize(
                    ALPHA, indices, encrypted=encrypt_selected(self.context, z, indices)
                )
                self.times["personalize"] = time.perf_counter() - started
                if not reply.theta_ciphertexts:
                    raise RuntimeError("Personalize answered without ciphertexts")
                self.retries = client.retries
        except Exception as error:  # counted as lost, with the reason
            self.error = f"{type(error).__name__}: {error}"


def _rest_client(url: str, key: str, rows: np.ndarray, stop: threading.Event) -> dict[str, Any]:
    latencies, statuses, lost = [], Counter(), 0
    with httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": key}) as http:
        index = 0
        while not stop.is_set():
            body = infer_body(rows[index % len(rows)])
            index += 1
            started = time.perf_counter()
            for _ in range(REST_ATTEMPTS):
                answer = http.post("/v2/models/secdood_base/infer", json=body)
                statuses[answer.status_code] += 1
                if answer.status_code != 429:
                    break
                time.sleep(float(answer.headers.get("Retry-After", "1")))
            if answer.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                lost += 1
    return {"latencies": latencies, "statuses": statuses, "lost": lost}


def run_load(service, devices: int, embed_dim: int, rows: np.ndarray) -> dict[str, Any]:
    keys = [create_context(LOAD_PARAMS) for _ in range(KEY_SETS)]
    fleet = [
        _Device(i, service.grpc_target, service.enrollment_key, keys, embed_dim)
        for i in range(devices)
    ]
    pid = _server_pid()
    stop = threading.Event()
    started = time.perf_counter()
    with ThreadPoolExecutor(REST_CLIENTS) as rest_pool:
        rest = [
            rest_pool.submit(_rest_client, service.rest_url, service.scoring_key, rows, stop)
            for _ in range(REST_CLIENTS)
        ]
        threads = [threading.Thread(target=device.run, daemon=True) for device in fleet]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + LOAD_DEADLINE_S
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.1))
        stop.set()
        rest_results = [future.result() for future in rest]
    wall_s = time.perf_counter() - started
    peak_rss = _rss_bytes(pid, "VmHWM")
    completed = [d for d in fleet if d.error is None and "personalize" in d.times]
    rest_latencies = [x for r in rest_results for x in r["latencies"]]
    rest_statuses = sum((r["statuses"] for r in rest_results), Counter())
    return {
        "devices": devices,
        "completed": len(completed),
        "lost_devices": devices - len(completed),
        "errors": sorted({d.error for d in fleet if d.error})[:5],
        "device_retries": sum(d.retries for d in fleet),
        "enrol_retries": sum(d.enrol_retries for d in fleet),
        "wall_s": wall_s,
        "phases": {
            phase: _percentiles([d.times[phase] for d in fleet if phase in d.times])
            for phase in ("enrol", "upload", "personalize")
        },
        "rest": {
            **_percentiles(rest_latencies),
            "requests": len(rest_latencies),
            "statuses": {str(k): v for k, v in sorted(rest_statuses.items())},
            "lost": sum(r["lost"] for r in rest_results),
        },
        "server_peak_rss_bytes": peak_rss,
        "context_bytes": len(public_context_bytes(keys[0])),
    }


# -- fuzz -------------------------------------------------------------------------------------

FUZZ_TESTS = {
    "rest": ("tests/rest/test_fuzz_openapi.py", r"schemathesis \(long\): (\{.*\})"),
    "grpc": ("tests/gateway/test_gateway_fuzz.py", r"gRPC fuzz \(long\): (\d+) calls (\{.*\})"),
}


def run_fuzz() -> dict[str, Any]:
    """The long fuzz tests (they fail on any 5xx / schema violation / crash); their counts."""
    results: dict[str, Any] = {}
    for name, (path, pattern) in FUZZ_TESTS.items():
        command = [
            sys.executable,
            "-m",
            "pytest",
            path,
            "-m",
            "slow",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
        ]
        run = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        match = re.search(pattern, run.stdout)
        results[name] = {
            "passed": run.returncode == 0,
            "summary": match.group(0) if match else run.stdout[-500:],
        }
    return results


# -- report -----------------------------------------------------------------------------------


# -- memory bound ------------------------------------------------------------------------------


def _hwm_growth(work: Any, *args: Any) -> int:
    """Peak RSS growth (bytes) of ``work(*args)`` in this process."""
    before = _rss_bytes(os.getpid(), "VmHWM")
    work(*args)
    return _rss_bytes(os.getpid(), "VmHWM") - before


def _calibrate(context_bytes: bytes, upload_cap: int) -> dict[str, float]:
    """Child-process measurements: memory a parsed context keeps (RSS growth per context
    while eight are kept) and the peak growth of parsing a JSON body."""
    from server.rest.inputs import parse_json_body
    from server.rest.schemas import InferenceRequest

    EvaluationKeys.from_public_context(context_bytes)  # first-use costs (tables, pools)
    before = _rss_bytes(os.getpid(), "VmRSS")
    parsed = [EvaluationKeys.from_public_context(context_bytes) for _ in range(8)]
    growth = _rss_bytes(os.getpid(), "VmRSS") - before
    values = (upload_cap - 200) // 4  # the densest JSON of numbers: "0.0," per value
    head = {"name": "features", "shape": [values, 1], "datatype": "FP32", "data": []}
    body = json.dumps({"inputs": [head]}).replace("[]", "[" + ",".join(["0.0"] * values) + "]")
    body = body.encode()
    json_growth = _hwm_growth(parse_json_body, body, InferenceRequest, "inference request")
    return {
        "context_rss_bytes": growth / len(parsed),
        "context_estimate_bytes": parsed[0].nbytes,
        "json_body_bytes": len(body),
        "json_expansion": json_growth / len(body),
    }


def calibrate(context_bytes: bytes, upload_cap: int) -> dict[str, float]:
    """:func:`_calibrate` in a fresh process (so earlier allocations do not hide the growth)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_calibrate, (context_bytes, upload_cap))


def memory_terms(
    settings: Settings, baseline: int, devices: int, json_expansion: float
) -> dict[str, int]:
    """The server's worst case by configuration, term by term (bytes); their sum is the bound.

    Each term is a cap times the most one unit may hold. A parsed context takes
    at most :func:`~server.ckks_matmul.parsed_bytes_limit` of its upload (sized
    before SEAL allocates, refused otherwise); a data call holds its upload, the
    protobuf message's copy of it and the Galois-key bytes copied out of that,
    and while SEAL loads them its decompression buffer and the keys. Every
    admitted scoring request holds its body and the parsed body
    (``json_expansion`` × the body: measured, not enforced).
    """
    upload = settings.max_upload_bytes
    parsed = parsed_bytes_limit(upload)
    data_calls = settings.grpc_max_data_streams
    scoring = settings.rest_concurrent_scoring
    return {
        "baseline (RSS after start, measured)": baseline,
        "parsed-context cache (`context_cache_bytes`)": settings.context_cache_bytes,
        "encoded-rows cache": MAX_ENCODED_ROWS_BYTES,
        f"{data_calls} data calls × (3 upload copies + 2 × parsed context)": data_calls
        * (3 * upload + 2 * parsed),
        f"{data_calls} gRPC messages in flight": data_calls * MAX_MESSAGE_BYTES,
        f"{devices} connections × HTTP/2 window": devices * GRPC_WINDOW_BYTES,
        f"{scoring} scoring requests × body × (1 + {json_expansion:.0f} parsed)": int(
            scoring * upload * (1 + json_expansion)
        ),
    }


def render(result: dict[str, Any]) -> str:
    load, stall = result["load"], result["stall"]
    mib = 1024 * 1024
    lines = [
        f"Server: child process, `grpc_max_data_streams={DATA_STREAMS}`, per device 2, "
        f"`context_cache_bytes={CACHE_BYTES // mib} MiB`, `max_upload_bytes="
        f"{MAX_UPLOAD_BYTES // mib} MiB`; load generator in the parent process. The machine "
        "was shared with other jobs: absolute times are indicative only.",
        "",
        f"**Stall**: {stall['stalled_streams']} silent uploads held open (2 × the cap of "
        f"{stall['stream_cap']}; {stall['refused_at_once']} refused at once with "
        f"RESOURCE_EXHAUSTED). Meanwhile gRPC health p50 {stall['health']['p50_ms']:.1f} ms / "
        f"max {stall['health']['max_ms']:.1f} ms, enrolment p50 {stall['enrol']['p50_ms']:.1f} "
        f"ms / max {stall['enrol']['max_ms']:.1f} ms (n = {stall['health']['n']} each).",
        "",
        f"**Load**: {load['devices']} devices (threads, own channels) enrol → upload a "
        f"{load['context_bytes'] / mib:.1f} MiB public context → personalise one encrypted "
        f"embedding (α = {ALPHA}), with {REST_CLIENTS} REST clients scoring meanwhile. "
        f"Completed {load['completed']}/{load['devices']} devices, lost {load['lost_devices']}, "
        f"{load['device_retries']} overload retries ({load['enrol_retries']} of them "
        f"enrolments); REST {load['rest']['requests']} scored, "
        f"lost {load['rest']['lost']}, statuses {load['rest']['statuses']}. Wall "
        f"{load['wall_s']:.0f} s.",
        "",
    ]
    rows = [
        [phase, stats["n"], f"{stats['p50_ms']:.0f}", f"{stats['p95_ms']:.0f}"]
        for phase, stats in load["phases"].items()
    ]
    rows.append(
        [
            "REST infer",
            load["rest"]["n"],
            f"{load['rest']['p50_ms']:.0f}",
            f"{load['rest']['p95_ms']:.0f}",
        ]
    )
    lines.append(markdown_table(["phase", "n", "p50 ms", "p95 ms"], rows))
    lines += [
        "",
        f"**Memory**: server peak RSS (VmHWM) {result['peak_rss_bytes'] / mib:.0f} MiB, "
        f"{'within' if result['peak_rss_bytes'] <= result['rss_bound_bytes'] else 'OVER'} "
        f"the bound by configuration of {result['rss_bound_bytes'] / mib:.0f} MiB, the sum of:",
        "",
    ]
    terms = [[name, f"{size / mib:.0f}"] for name, size in result["memory_terms"].items()]
    lines.append(markdown_table(["term", "MiB"], terms))
    calibration = result["calibration"]
    lines += [
        "",
        f"Measured in a fresh process for those terms: a parsed {load['context_bytes'] / mib:.1f}"
        f" MiB context takes {calibration['context_rss_bytes'] / mib:.1f} MiB of RSS (the "
        f"cache budgets it at {calibration['context_estimate_bytes'] / mib:.1f} MiB); a "
        f"{calibration['json_body_bytes'] / mib:.0f} MiB JSON scoring body of `0.0` values "
        f"grows RSS by {calibration['json_expansion']:.1f} × its size while parsed.",
    ]
    if result.get("fuzz"):
        when = result["fuzz_date"]
        lines += ["", f"**Fuzzing** (the slow tests, run by `--fuzz` on {when}):", ""]
        for name, fuzz in result["fuzz"].items():
            verdict = "passed" if fuzz["passed"] else "FAILED"
            lines.append(f"- {name}: {verdict} — `{fuzz['summary']}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 devices instead of 100")
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--fuzz", action="store_true", help="also run the long fuzz tests")
    parser.add_argument("--model", type=Path, default=None, help="base-model artifact (.pt)")
    args = parser.parse_args(argv)
    devices = args.devices or (20 if args.quick else 100)
    artifact, source = load_artifact(args.model)
    bundle = bundle_from_bytes(artifact)
    config = bundle.model.config
    rows = bundle.reference_features[:64].numpy().astype(np.float32)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="secdood-reliability-") as folder:
        data_dir = Path(folder)
        register_artifact(data_dir, artifact)
        _register_hypernetwork(data_dir, config.embed_dim, config.num_classes)
        settings = bench_settings(data_dir).model_copy(
            update={
                "context_cache_bytes": CACHE_BYTES,
                "max_upload_bytes": MAX_UPLOAD_BYTES,
                "grpc_max_data_streams": DATA_STREAMS,
            }
        )
        with serve(settings) as service:
            pid = _server_pid()
            baseline = _rss_bytes(pid, "VmRSS")
            stall = run_stall(service.grpc_target, service.enrollment_key, probes=20)
            load = run_load(service, devices, config.embed_dim, rows)
            peak = _rss_bytes(pid, "VmHWM")
    calibration = calibrate(
        public_context_bytes(create_context(LOAD_PARAMS)), settings.max_upload_bytes
    )
    terms = memory_terms(settings, baseline, devices, calibration["json_expansion"])
    result: dict[str, Any] = {
        "model": source,
        "stall": stall,
        "load": load,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak,
        "memory_terms": terms,
        "rss_bound_bytes": sum(terms.values()),
        "calibration": calibration,
    }
    if args.fuzz:
        result["fuzz"], result["fuzz_date"] = run_fuzz(), time.strftime("%Y-%m-%d")
    else:  # keep the last fuzz run's counts in the report
        previous = RESULTS / "reliability.json"
        if previous.exists():
            old = json.loads(previous.read_text())
            if "fuzz" in old:
                result["fuzz"] = old["fuzz"]
                result["fuzz_date"] = old.get("fuzz_date", old.get("date", "?"))
    write_json("reliability", result)
    write_section("reliability", "Reliability: stall, 100-device load, fuzzing", render(result))
    print(render(result))
    failed = load["lost_devices"] or load["rest"]["lost"] or peak > result["rss_bound_bytes"]
    failed = failed or stall["health"]["max_ms"] >= 1000 or stall["enrol"]["max_ms"] >= 1000
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
