"""Training jobs: run any method's trainer, report progress, land the artifact.

The CLI (``secdood-server train``) runs a job in the foreground and the REST
API (``POST /v1/jobs``) queues it for one background worker; both go through
:class:`JobRunner`, so a model trained either way is registered the same way.

The queue is bounded (a full queue is refused with :class:`JobQueueFullError`,
HTTP 429), a queued or running job can be cancelled, and :meth:`JobRunner.shutdown`
cancels everything within a bounded time. Cancellation is cooperative: a
trainer learns of it at its next progress report (trainers report every batch),
and a job whose cancellation was requested never registers a model — the check
and the registration share one lock with shutdown.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from server.registry.errors import JobStateError, NotFoundError
from server.registry.records import FINAL_JOB_STATES, JobRecord, ModelRecord
from server.registry.tables import JobState
from server.training.base import ProgressFn, TrainResult
from server.training.catalog import get_trainer, validate_config
from shared.saved_files import METHOD_FORMAT, METHOD_FORMAT_VERSION, save_payload

log = logging.getLogger(__name__)

#: progress is written to the database at most this often (seconds)
PROGRESS_INTERVAL_S = 0.5
#: jobs that may wait for the worker; one more is refused (HTTP 429)
DEFAULT_MAX_QUEUED_JOBS = 8
#: what a refused client is told to wait before trying again (seconds)
QUEUE_RETRY_AFTER_S = 30
#: how long shutdown waits for a cancelled trainer to notice (it is marked cancelled anyway)
SHUTDOWN_WAIT_S = 5.0
SHUTDOWN_REASON = "cancelled: the server shut down"


class JobQueueFullError(RuntimeError):
    """The job queue is at its bound; retry after ``retry_after_s`` seconds."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the job queue is full ({limit} jobs waiting, the limit); retry later or "
            "cancel a queued job (DELETE /v1/jobs/{id})"
        )
        self.retry_after_s = QUEUE_RETRY_AFTER_S


class JobRunnerStoppedError(RuntimeError):
    """The runner is shutting down and takes no new jobs."""


class JobCancelledError(Exception):
    """Raised inside a trainer (from its progress callback) once its job was cancelled."""


class JobFinishedError(ValueError):
    """A finished job cannot be cancelled (HTTP 409)."""


def method_artifact(method: str, result: TrainResult) -> bytes:
    """The bytes to store for a finished run (the method's own format if it has one)."""
    if result.artifact is not None:
        return result.artifact
    return save_payload(
        {
            "format": METHOD_FORMAT,
            "format_version": METHOD_FORMAT_VERSION,
            "method": method,
            "state": result.state,
            "config": result.config,
            "metrics": result.metrics,
        }
    )


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
    try:
        return registry.get_model(method)
    except NotFoundError:
        progress = progress or console_progress(f"training {method}")
        _, record = JobRunner(registry).run(method, {}, progress=progress)
        return record


@dataclass
class _Ticket:
    """One job the runner owns: what to run and how to stop it."""

    job_id: str
    method: str
    config: Any
    cancelled: threading.Event = field(default_factory=threading.Event)
    reason: str = "cancelled by request"

    def cancel(self, reason: str) -> None:
        self.reason = reason
        self.cancelled.set()


class JobRunner:
    """Runs training jobs one at a time (training saturates the CPU) and records them."""

    def __init__(self, registry: Any, max_queued: int = DEFAULT_MAX_QUEUED_JOBS) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued}")
        self.registry = registry
        self.max_queued = max_queued
        self._queue: deque[_Ticket] = deque()
        self._active: dict[str, _Ticket] = {}  # running now (background or foreground)
        self._condition = threading.Condition()
        self._register_lock = threading.Lock()
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._done: dict[str, threading.Event] = {}

    # -- submitting ----------------------------------------------------------------------

    def submit(self, method: str, config: dict[str, Any] | None = None) -> JobRecord:
        """Validate, record as queued and hand to the worker; errors are the caller's."""
        parsed = validate_config(method, config)
        with self._condition:
            if self._stopping:
                raise JobRunnerStoppedError("the server is shutting down; no new jobs")
            if len(self._queue) >= self.max_queued:
                raise JobQueueFullError(self.max_queued)
            job = self.registry.create_job(method, parsed.model_dump(mode="json"))
            self._queue.append(_Ticket(job.id, method, parsed))
            self._done[job.id] = threading.Event()
            self._start_worker()
            self._condition.notify_all()
        return job

    def run(
        self, method: str, config: dict[str, Any] | None = None, progress: ProgressFn | None = None
    ) -> tuple[JobRecord, ModelRecord]:
        """Run a job in the foreground; raises on failure or cancellation (after recording it)."""
        parsed = validate_config(method, config)
        with self._condition:
            if self._stopping:
                raise JobRunnerStoppedError("the server is shutting down; no new jobs")
            job = self.registry.create_job(method, parsed.model_dump(mode="json"))
            ticket = _Ticket(job.id, method, parsed)
            self._active[job.id] = ticket
        try:
            model = self._execute(ticket, progress, reraise=True)
        finally:
            with self._condition:
                self._active.pop(job.id, None)
        assert model is not None  # reraise=True: a failed run raised above
        return self.registry.get_job(job.id), model

    def busy(self) -> bool:
        """Whether a trainer is still running (e.g. a cancelled one between progress reports)."""
        with self._condition:
            return bool(self._active)

    def queued(self) -> int:
        """Jobs waiting for the worker."""
        with self._condition:
            return len(self._queue)

    def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Block until a submitted job has finished (or ``timeout``); its record."""
        with self._condition:
            done = self._done.get(job_id)
        if done is not None and not done.wait(timeout):
            raise TimeoutError(f"job {job_id} did not finish within {timeout} s")
        return self.registry.get_job(job_id)

    # -- cancelling ----------------------------------------------------------------------

    def cancel(self, job_id: str, reason: str = "cancelled by request") -> JobRecord:
        """Cancel a queued or running job; its record (state ``cancelled``).

        Raises ``NotFoundError`` for an unknown id and :class:`JobFinishedError`
        for a job that has already finished.
        """
        job = self.registry.get_job(job_id)
        if job.state in FINAL_JOB_STATES:
            raise JobFinishedError(f"job {job_id} is already {job.state.value}; nothing to cancel")
        with self._condition:
            ticket = self._active.get(job_id)
            for waiting in list(self._queue):
                if waiting.job_id == job_id:
                    self._queue.remove(waiting)
                    self._finish(waiting.job_id)
                    ticket = waiting
            if ticket is not None:
                ticket.cancel(reason)
        # The record says cancelled at once; the trainer stops at its next progress report.
        return self._mark_cancelled(job_id, reason)

    def shutdown(self, wait_s: float = SHUTDOWN_WAIT_S) -> None:
        """Refuse new jobs, cancel queued and running ones; no model is registered afterwards.

        Returns after at most about ``wait_s`` seconds even when a trainer is in the
        middle of a long step: its job is already recorded as cancelled and its
        thread (a daemon) cannot register anything any more.
        """
        with self._condition:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            running = list(self._active.values())
            for ticket in pending + running:
                ticket.cancel(SHUTDOWN_REASON)
            self._condition.notify_all()
        with self._register_lock:  # a registration in flight finishes; none starts after this
            pass
        for ticket in pending + running:
            self._mark_cancelled(ticket.job_id, SHUTDOWN_REASON)
        for ticket in pending:
            self._finish(ticket.job_id)
        if self._worker is not None:
            self._worker.join(wait_s)
            if self._worker.is_alive():
                log.warning("a cancelled trainer is still busy; exiting without waiting for it")

    # -- the worker ----------------------------------------------------------------------

    def _start_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="job-worker", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._stopping:
                    self._condition.wait()
                if self._stopping:
                    return
                ticket = self._queue.popleft()
                self._active[ticket.job_id] = ticket
            try:
                self._execute(ticket, None, reraise=False)
            finally:
                with self._condition:
                    self._active.pop(ticket.job_id, None)
                self._finish(ticket.job_id)

    def _finish(self, job_id: str) -> None:
        done = self._done.pop(job_id, None)
        if done is not None:
            done.set()

    def _execute(
        self, ticket: _Ticket, progress: ProgressFn | None, reraise: bool
    ) -> ModelRecord | None:
        job_id, method = ticket.job_id, ticket.method
        last_write = 0.0

        def report(fraction: float, message: str) -> None:
            nonlocal last_write
            if ticket.cancelled.is_set():
                raise JobCancelledError(ticket.reason)
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
            if ticket.cancelled.is_set():
                raise JobCancelledError(ticket.reason)
            trainer = get_trainer(method)
            self.registry.update_job(
                job_id, state=JobState.RUNNING, progress=0.0, message="started"
            )
            if getattr(trainer, "needs_registry", False):
                # Trainers that build on registered models (hypernetwork needs secdood_base).
                result = trainer.train(ticket.config, report, registry=self.registry)
            else:
                result = trainer.train(ticket.config, report)
            with self._register_lock:
                if ticket.cancelled.is_set():
                    raise JobCancelledError(ticket.reason)
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
            if ticket.cancelled.is_set():
                log.info("job %s (%s) %s", job_id, method, ticket.reason)
                self._mark_cancelled(job_id, ticket.reason)
                if reraise:
                    raise JobCancelledError(ticket.reason) from None
                return None
            log.exception("job %s (%s) failed", job_id, method)
            self._record_failure(job_id, exc)
            if reraise:
                raise
            return None

    def _record_failure(self, job_id: str, exc: Exception) -> None:
        try:
            self.registry.update_job(
                job_id,
                state=JobState.FAILED,
                message=f"{type(exc).__name__}: {exc}",
                log_append=traceback.format_exc(),
            )
        except JobStateError:  # cancelled meanwhile: that state stands
            pass

    def _mark_cancelled(self, job_id: str, reason: str) -> JobRecord:
        """Record the job as cancelled; a job that already finished keeps its final state."""
        try:
            return self.registry.update_job(job_id, state=JobState.CANCELLED, message=reason)
        except JobStateError:
            return self.registry.get_job(job_id)
