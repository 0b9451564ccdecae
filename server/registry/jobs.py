"""Training jobs in the registry: a queue with checked state moves, progress and a bounded log."""

from __future__ import annotations

import math
import uuid
from typing import Any

from sqlalchemy import select

from server.registry.checks import check_id, check_json, check_name, now
from server.registry.errors import JobStateError, NotFoundError
from server.registry.records import FINAL_JOB_STATES, JobRecord, snapshot
from server.registry.tables import JobRow, JobState, ModelRow
from server.registry.transactions import RegistryCore

#: jobs keep at most this many characters of log (the oldest lines are dropped)
MAX_JOB_LOG_CHARS = 1_000_000

#: which state a job may move to from each state (staying put is always allowed
#: while the job is not finished)
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class JobQueue(RegistryCore):
    """Queues training jobs and records their progress; part of the registry façade."""

    def create_job(self, method: str, config: dict[str, Any]) -> JobRecord:
        """Queue a training job of ``method``; a worker picks it up by id."""
        check_name(method, "method")
        config = check_json(config, "config")
        with self._writing() as session:
            row = JobRow(
                id=str(uuid.uuid4()),
                method=method,
                config=config,
                state=JobState.QUEUED,
                progress=0.0,
                message="",
                log="",
                result=None,
                model_id=None,
                created_at=now(),
                started_at=None,
                finished_at=None,
            )
            session.add(row)
            session.flush()
            return _job_record(row)

    def update_job(
        self,
        job_id: str,
        *,
        state: JobState | str | None = None,
        progress: float | None = None,
        message: str | None = None,
        log_append: str | None = None,
        result: dict[str, Any] | None = None,
        model_id: int | None = None,
    ) -> JobRecord:
        """Change a job atomically; fields left as None stay as they are.

        Allowed moves: queued → running | failed | cancelled, running →
        succeeded | failed | cancelled. A finished job cannot change at all
        (:class:`~server.registry.errors.JobStateError`, a ``ValueError``), so a
        worker learns of a cancellation from its next update. ``log_append``
        adds text to the log (a newline is added if missing). Entering
        ``running`` sets ``started_at``; entering a final state sets
        ``finished_at``, and ``succeeded`` sets progress to 1.
        """
        check_id(job_id, "job_id")
        new_state = _parse_state(state)
        if progress is not None:
            if isinstance(progress, bool) or not isinstance(progress, int | float):
                raise TypeError(f"progress must be a number, got {type(progress).__name__}")
            if not (math.isfinite(progress) and 0.0 <= progress <= 1.0):
                raise ValueError(f"progress must be a fraction in [0, 1], got {progress}")
        for text, what in ((message, "message"), (log_append, "log_append")):
            if text is not None and not isinstance(text, str):
                raise TypeError(f"{what} must be a str, got {type(text).__name__}")
        result = check_json(result, "result", allow_none=True)
        if model_id is not None and (isinstance(model_id, bool) or not isinstance(model_id, int)):
            raise TypeError(f"model_id must be an int, got {type(model_id).__name__}")

        with self._writing() as session:
            row = session.get(JobRow, job_id, with_for_update=True)
            if row is None:
                raise NotFoundError("job", job_id)
            current = JobState(row.state)
            if current in FINAL_JOB_STATES:
                raise JobStateError(
                    f"job {job_id} is already {current.value}; a finished job cannot change"
                )
            if new_state is not None and new_state != current:
                if new_state not in JOB_TRANSITIONS[current]:
                    allowed = sorted(state.value for state in JOB_TRANSITIONS[current])
                    raise JobStateError(
                        f"job {job_id} cannot go from {current.value} to {new_state.value}; "
                        f"allowed: {', '.join(allowed)}"
                    )
                moment = now()
                row.state = new_state
                if new_state is JobState.RUNNING:
                    row.started_at = moment
                if new_state in FINAL_JOB_STATES:
                    row.finished_at = moment
                if new_state is JobState.SUCCEEDED and progress is None:
                    progress = 1.0
            if model_id is not None:
                if session.get(ModelRow, model_id) is None:
                    raise NotFoundError("model id", model_id)
                row.model_id = model_id
            if progress is not None:
                row.progress = float(progress)
            if message is not None:
                row.message = message
            if log_append:
                line = log_append if log_append.endswith("\n") else log_append + "\n"
                row.log = (row.log + line)[-MAX_JOB_LOG_CHARS:]
            if result is not None:
                row.result = result
            session.flush()
            return _job_record(row)

    def get_job(self, job_id: str) -> JobRecord:
        """A job by id."""
        check_id(job_id, "job_id")
        with self._reading() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise NotFoundError("job", job_id)
            return _job_record(row)

    def list_jobs(self, state: JobState | str | None = None) -> list[JobRecord]:
        """All jobs (optionally only those in ``state``), newest first."""
        query = select(JobRow).order_by(JobRow.created_at.desc(), JobRow.id)
        wanted = _parse_state(state)
        if wanted is not None:
            query = query.where(JobRow.state == wanted)
        with self._reading() as session:
            return [_job_record(row) for row in session.scalars(query)]


def _job_record(row: JobRow) -> JobRecord:
    return snapshot(row, JobRecord, state=JobState(row.state))


def _parse_state(state: JobState | str | None) -> JobState | None:
    if state is None or isinstance(state, JobState):
        return state
    if not isinstance(state, str):
        raise TypeError(f"job state must be a JobState or str, got {type(state).__name__}")
    try:
        return JobState(state)
    except ValueError:
        allowed = ", ".join(member.value for member in JobState)
        raise ValueError(f"unknown job state {state!r}; expected one of: {allowed}") from None
