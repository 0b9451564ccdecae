"""``/v1/models``, ``/v1/devices`` and ``/v1/jobs``: thin views over the registry and job runner.

Listing models needs the scoring key; devices and jobs need the admin key.
Device tokens (and their hashes) never leave the registry.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status

from server.jobs import JobFinishedError, JobQueueFullError, JobRunnerStoppedError
from server.registry import JobState, ModelRecord, NotFoundError
from server.rest.auth import State, require_admin, require_scoring
from server.rest.capacity import OverloadedError
from server.rest.inputs import MAX_NAME_CHARS, parse_json_body
from server.rest.schemas import DeviceView, ErrorBody, JobCreate, JobView, ModelView
from server.rest.state import ServiceState
from server.training.catalog import UnknownMethodError

router = APIRouter(prefix="/v1", tags=["models, devices and jobs (v1)"])

_AUTH_ERRORS = {code: {"model": ErrorBody} for code in (401, 403)}
#: job ids are UUIDs (36 characters); anything up to this length is looked up (404 if unknown)
JobId = Annotated[str, Path(min_length=1, max_length=64)]


@router.get(
    "/models",
    summary="Every registered model variant",
    response_model=list[ModelView],
    responses=_AUTH_ERRORS,
    dependencies=[Depends(require_scoring)],
)
def list_models(
    state: State,
    name: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_NAME_CHARS,
            # Python's str.strip() (the registry's check) also strips the ASCII separators
            # \x1c-\x1f, which the regex engine's \S accepts: exclude control characters too.
            pattern=r"^[^\s\x00-\x1f\x7f](.*[^\s\x00-\x1f\x7f])?$",
            description="only versions of this model (no surrounding blanks or control characters)",
        ),
    ] = None,
) -> list[ModelView]:
    served = state.model
    return [ModelView.of(record, served) for record in state.registry.list_models(name)]


@router.get(
    "/devices",
    summary="Every enrolled device (never its token)",
    response_model=list[DeviceView],
    responses=_AUTH_ERRORS,
    dependencies=[Depends(require_admin)],
)
def list_devices(state: State) -> list[DeviceView]:
    return [DeviceView.of(record) for record in state.registry.list_devices()]


@router.post(
    "/jobs",
    summary="Queue a training job (429 when the queue is full)",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    responses={**_AUTH_ERRORS, **{code: {"model": ErrorBody} for code in (422, 429, 503)}},
    dependencies=[Depends(require_admin)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": JobCreate.model_json_schema()}},
        }
    },
)
async def create_job(request: Request, state: State) -> JobView:
    # The body is read only here, after the admin key was checked (a dependency).
    body = parse_json_body(await request.body(), JobCreate, "job")
    try:
        job = state.jobs.submit(body.method, body.config)
    except (UnknownMethodError, ValueError, TypeError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except JobQueueFullError as exc:
        raise OverloadedError(str(exc), exc.retry_after_s) from None
    except JobRunnerStoppedError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    return _job_view(state, job.id, log=False)


@router.delete(
    "/jobs/{job_id}",
    summary="Cancel a queued or running job (it never registers a model)",
    response_model=JobView,
    responses={**_AUTH_ERRORS, **{code: {"model": ErrorBody} for code in (404, 409, 422)}},
    dependencies=[Depends(require_admin)],
)
def cancel_job(job_id: JobId, state: State) -> JobView:
    try:
        state.jobs.cancel(job_id)
    except JobFinishedError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return _job_view(state, job_id, log=False)


@router.get(
    "/jobs",
    summary="Every job, newest first (optionally only those in one state)",
    response_model=list[JobView],
    responses={**_AUTH_ERRORS, 422: {"model": ErrorBody}},
    dependencies=[Depends(require_admin)],
)
def list_jobs(
    state: State,
    state_filter: Annotated[
        JobState | None, Query(alias="state", description="only jobs in this state")
    ] = None,
) -> list[JobView]:
    served = state.model
    return [
        JobView.of(job, _job_model(state, job.model_id), served, log=False)
        for job in state.registry.list_jobs(state_filter)
    ]


@router.get(
    "/jobs/{job_id}",
    summary="One job: state, progress, message, result, model and log",
    response_model=JobView,
    responses={**_AUTH_ERRORS, 404: {"model": ErrorBody}},
    dependencies=[Depends(require_admin)],
)
def get_job(job_id: JobId, state: State) -> JobView:
    return _job_view(state, job_id, log=True)


def _job_view(state: ServiceState, job_id: str, log: bool) -> JobView:
    job = state.registry.get_job(job_id)
    return JobView.of(job, _job_model(state, job.model_id), state.model, log=log)


def _job_model(state: ServiceState, model_id: int | None) -> ModelRecord | None:
    if model_id is None:
        return None
    try:
        return state.registry.get_model_by_id(model_id)
    except NotFoundError:
        return None
