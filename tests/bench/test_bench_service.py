"""bench/service.py's measurement functions on the tiny model: plumbing, not timings."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from support import make_tiny_bundle

from bench.harness import (
    RunningService,
    bench_settings,
    register_artifact,
    run_load,
    serve,
    split_requests,
)
from bench.service import (
    compare,
    enroll_device,
    feature_rows,
    grpc_download_client,
    in_process_infer_client,
    in_process_read_client,
    rest_infer_client,
    table_rows,
)
from server.registry import open_registry
from shared.models.checkpoint import bundle_to_bytes
from shared.pipeline import OODPipeline


def test_split_requests_covers_total_evenly() -> None:
    for total, clients in [(20, 16), (200, 4), (7, 7), (5, 1)]:
        shares = split_requests(total, clients)
        assert sum(shares) == total and len(shares) == clients
        assert max(shares) - min(shares) <= 1 and min(shares) >= 1


@pytest.mark.parametrize(("total", "clients"), [(3, 4), (0, 1), (4, 0), (2.0, 1), (True, 1)])
def test_split_requests_rejects_bad_counts(total: object, clients: object) -> None:
    with pytest.raises(ValueError, match="must be"):
        split_requests(total, clients)  # type: ignore[arg-type]


def test_run_load_times_every_request_from_every_client() -> None:
    calls: dict[int, int] = {}
    lock = threading.Lock()

    @contextmanager
    def open_client(index: int) -> Iterator:
        def send() -> None:
            with lock:
                calls[index] = calls.get(index, 0) + 1

        yield send

    result = run_load(open_client, clients=3, total=10, warmup=2)
    assert len(result.latencies_s) == 10
    # each client: its share (4, 3, 3) plus 2 untimed warm-up calls
    assert calls == {0: 6, 1: 5, 2: 5}
    assert result.p50_ms == pytest.approx(np.percentile(result.latencies_s, 50) * 1e3)
    assert result.requests_per_s == pytest.approx(10 / result.wall_s)
    assert result.p99_ms >= result.p50_ms


def test_run_load_reports_a_failing_client() -> None:
    @contextmanager
    def open_client(index: int) -> Iterator:
        def send() -> None:
            if index == 1:
                raise OSError("connection refused")

        yield send

    with pytest.raises(RuntimeError, match="connection refused"):
        run_load(open_client, clients=2, total=4)


def test_serve_requires_keys(tmp_path: Path) -> None:
    settings = bench_settings(tmp_path).model_copy(update={"scoring_api_key": None})
    with pytest.raises(ValueError, match="scoring_api_key"):
        with serve(settings, in_child=False):
            pass


def test_service_and_in_process_sides_agree_on_the_tiny_model(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    bundle = make_tiny_bundle()
    artifact = bundle_to_bytes(bundle)
    data_dir = tmp_path / "data"
    sha256 = register_artifact(data_dir, artifact)
    assert sha256 == hashlib.sha256(artifact).hexdigest()
    rows = feature_rows(bundle, count=5)
    pipeline = OODPipeline(bundle)

    with serve(bench_settings(data_dir), in_child=True) as service:
        assert isinstance(service, RunningService)
        # the served answer for one row equals the in-process verdict for it
        with rest_infer_client(service, rows)(0) as send_rest:
            outputs = {out["name"]: out["data"] for out in send_rest()["outputs"]}
        with in_process_infer_client(pipeline, rows)(0) as send_local:
            local = send_local()
        np.testing.assert_allclose(outputs["ood_score"], local.ood_score.numpy(), rtol=1e-5)
        assert outputs["label"] == local.labels

        token = enroll_device(service)
        with open_registry(None, data_dir) as registry:
            results = compare(
                grpc_download_client(service, token, tmp_path),
                in_process_read_client(registry.artifacts, sha256),
                total=4,
                levels=(1, 2),
            )
        downloaded = (tmp_path / "client-0.pt").read_bytes()
        assert downloaded == artifact

        infer = compare(
            rest_infer_client(service, rows),
            in_process_infer_client(pipeline, rows),
            total=4,
            levels=(1, 2),
        )

    for level in [*results, *infer]:
        assert level["service"]["requests"] == 4 and level["in_process"]["requests"] == 4
        ratio = level["service"]["p50_ms"] / level["in_process"]["p50_ms"]
        assert level["p50_ratio"] == pytest.approx(ratio)
        throughput = level["service"]["requests_per_s"] / level["in_process"]["requests_per_s"]
        assert level["throughput_ratio"] == pytest.approx(throughput)


def test_table_rows_show_each_level_with_rounded_numbers() -> None:
    side = {"p50_ms": 1.234, "p99_ms": 5.678, "requests_per_s": 812.6}
    local = {"p50_ms": 0.1, "p99_ms": 0.5, "requests_per_s": 9000.4}
    level = {"clients": 4, "service": side, "in_process": local}
    level |= {"p50_ratio": 12.34, "throughput_ratio": 812.6 / 9000.4}
    (row,) = table_rows("REST", "score_features", [level])
    assert row[:3] == ["REST", "score_features", 4]
    assert [float(cell) for cell in row[3:]] == pytest.approx(
        [1.23, 5.68, 813, 0.10, 0.50, 9000, 12.34, 0.09], abs=1e-9
    )
