"""Training jobs: run any method's trainer, report progress, land the artifact.

The CLI (``secdood-server train``) runs a job in the foreground and the REST
API (``POST /v1/jobs``) in a background thread; both go through
:class:`JobRunner`, so a model trained either way is registered the same way.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from tqdm.auto import tqdm

from server.methods.base import ProgressFn, TrainResult
from server.methods.catalog import get_trainer, validate_config
from server.registry.records import JobRecord, ModelRecord
from server.registry.tables import JobState

log = logging.getLogger(__name__)

#: progress is written to the database at most this often (seconds)
PROGRESS_INTERVAL_S = 0.5


def method_artifact(method: str, result: TrainResult) -> bytes:
    """The bytes to store for a finished run (the method's own format if it has one)."""
    if result.artifact is not None:
        return result.artifact
    buffer = io.BytesIO()
    torch.save(
        {
            "format": "secdood-method",
            "format_version": 1,
            "method": method,
            "state": result.state,
            "config": result.config,
            "metrics": result.metrics,
        },
        buffer,
    )
    return buffer.getvalue()


def console_progress(description: str) -> ProgressFn:
    """A progress callback drawing a tqdm bar (percent done + the trainer's last message)."""
    bar = tqdm(total=100, desc=description, unit="%", leave=True)

    def report(fraction: float, message: str) -> None:
        bar.n = round(100 * min(max(fraction, 0.0), 1.0))
        bar.set_postfix_str(message[:60], refresh=True)
        if fraction >= 1.0:
            bar.close()

    return report


def ensure_model(registry: Any, method: str, progress: ProgressFn | None = None) -> ModelRecord:
    """The latest registered model of ``method``, training it first when there is none."""
    from server.registry.errors import NotFoundError

    try:
        return registry.get_model(method)
    except NotFoundError:
        progress = progress or console_progress(f"training {method}")
        _, record = JobRunner(registry).run(method, {}, progress=progress)
        return record


class JobRunner:
    """Runs training jobs one at a time (training saturates the CPU) and records them."""

    def __init__(self, registry: Any, max_workers: int = 1) -> None:
        self.registry = registry
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="job")
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()

    def submit(self, method: str, config: dict[str, Any] | None = None) -> JobRecord:
        """Validate, record as queued and start in the background; errors are the caller's."""
        parsed = validate_config(method, config)
        job = self.registry.create_job(method, parsed.model_dump(mode="json"))
        with self._lock:
            self._futures[job.id] = self._executor.submit(self._run, job.id, method, parsed)
        return job

    def run(
        self, method: str, config: dict[str, Any] | None = None, progress: ProgressFn | None = None
    ) -> tuple[JobRecord, ModelRecord]:
        """Run a job in the foreground; raises on failure (after recording it)."""
        parsed = validate_config(method, config)
        job = self.registry.create_job(method, parsed.model_dump(mode="json"))
        model = self._run(job.id, method, parsed, progress, reraise=True)
        return self.registry.get_job(job.id), model

    def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        with self._lock:
            future = self._futures.get(job_id)
        if future is not None:
            future.result(timeout=timeout)
        return self.registry.get_job(job_id)

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)

    def _run(
        self,
        job_id: str,
        method: str,
        config: Any,
        progress: ProgressFn | None = None,
        reraise: bool = False,
    ) -> ModelRecord | None:
        trainer = get_trainer(method)
        if getattr(trainer, "needs_registry", False):
            # Trainers that build on registered models (e.g. hypernetwork needs secdood_base).
            trainer.registry = self.registry  # type: ignore[attr-defined]
        self.registry.update_job(job_id, state=JobState.RUNNING, progress=0.0, message="started")
        last_write = 0.0

        def report(fraction: float, message: str) -> None:
            nonlocal last_write
            if progress is not None:
                progress(fraction, message)
            now = time.monotonic()
            if now - last_write >= PROGRESS_INTERVAL_S or fraction >= 1.0:
                last_write = now
                self.registry.update_job(
                    job_id,
                    progress=min(max(fraction, 0.0), 1.0),
                    message=message,
                    log_append=f"{fraction:6.1%} {message}\n",
                )

        try:
            result = trainer.train(config, report)
            model = self.registry.register_model(
                name=method,
                method=method,
                config=result.config,
                metrics=result.metrics,
                artifact=method_artifact(method, result),
            )
            self.registry.update_job(
                job_id,
                state=JobState.SUCCEEDED,
                progress=1.0,
                message=f"registered {model.name} v{model.version}",
                result=result.metrics,
                model_id=model.id,
            )
            return model
        except Exception as exc:
            log.exception("job %s (%s) failed", job_id, method)
            self.registry.update_job(
                job_id,
                state=JobState.FAILED,
                message=f"{type(exc).__name__}: {exc}",
                log_append=traceback.format_exc(),
            )
            if reraise:
                raise
            return None
