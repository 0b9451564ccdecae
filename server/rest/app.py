"""The FastAPI application: routers, error handlers, body-size cap, metrics and docs.

Every error is JSON ``{"error": "..."}`` with a 4xx code for anything the client
got wrong — malformed JSON, bad shapes or datatypes, NaN, unknown model or
detector, a body or name past a limit, missing or wrong key — 429 (with
``Retry-After``) when the server is at capacity, and 503 while no model is
loaded. A client that disconnects mid-request is counted as 499, not logged as
an error. Bad input on ``/v2`` routes is 400 (as Triton and KServe answer), on
``/v1`` routes 422. Only a bug in the server is a 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from server.registry import NotFoundError
from server.rest import routes_admin, routes_score, routes_v2
from server.rest.body_limit import BodySizeLimitMiddleware
from server.rest.capacity import OverloadedError, ScoringGate
from server.rest.inputs import InputError, validation_message
from server.rest.metrics import CLIENT_CLOSED_REQUEST, MetricsMiddleware, ServiceMetrics
from server.rest.state import ModelNotReadyError, ServiceState

log = logging.getLogger(__name__)

#: seconds a client should wait before retrying while the model is loading
RETRY_AFTER_S = 5
#: seconds a client should wait when the registry database is momentarily busy
RETRY_AFTER_BUSY_S = 1

DESCRIPTION = """\
Secure, personalised OOD detection for edge video — REST API.

* **Open Inference Protocol (KServe V2)** under `/v2`: any V2 client can score
  `features` FP32 [N, D] or `clip` FP32 [N, T, 3, H, W] in [0, 1].
* **`POST /v1/ood/score`**: JSON features or clips, or an uploaded video file.
* **`/v1/models`, `/v1/devices`, `/v1/jobs`**: the registry and training jobs.

Send the API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`: the
scoring key scores and reads model metadata, the admin key does everything.
Health routes and `/metrics` are open. Errors are `{"error": "..."}`.
"""


def _bad_input_status(request: Request) -> int:
    if request.url.path.startswith("/v2"):
        return status.HTTP_400_BAD_REQUEST
    return status.HTTP_422_UNPROCESSABLE_CONTENT


def _error(code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=code, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(_bad_input_status(request), "invalid request: " + validation_message(exc))

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return _error(_bad_input_status(request), str(exc))

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return _error(status.HTTP_404_NOT_FOUND, str(exc))

    @app.exception_handler(ModelNotReadyError)
    async def not_ready(request: Request, exc: ModelNotReadyError) -> JSONResponse:
        return _error(
            status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), {"Retry-After": str(RETRY_AFTER_S)}
        )

    @app.exception_handler(OverloadedError)
    async def overloaded(request: Request, exc: OverloadedError) -> JSONResponse:
        return _error(
            status.HTTP_429_TOO_MANY_REQUESTS, str(exc), {"Retry-After": str(exc.retry_after_s)}
        )

    @app.exception_handler(OperationalError)
    async def registry_busy(request: Request, exc: OperationalError) -> JSONResponse:
        # e.g. SQLite's "database is locked" under a burst of writes: transient
        log.warning("registry busy on %s: %s", request.url.path, str(exc).splitlines()[0])
        return _error(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the registry is busy; retry shortly",
            {"Retry-After": str(RETRY_AFTER_BUSY_S)},
        )

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, exc: ClientDisconnect) -> Response:
        # Not a server error: nobody is listening for the answer any more.
        log.debug("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def server_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error")


def create_app(state: ServiceState) -> FastAPI:
    """The REST application serving ``state`` (its registry, jobs, model and keys).

    Run it with uvicorn, e.g. ``uvicorn.run(create_app(state), host=..., port=...)``.
    The app does not load a model itself: call ``state.load_model()`` (before or
    after starting) — until then ``/v2/health/ready`` answers 503.
    """
    app = FastAPI(
        title="SecDOOD",
        summary="Secure, personalised out-of-distribution detection on edge video.",
        description=DESCRIPTION,
        version=routes_v2.server_version(),
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    metrics = ServiceMetrics(is_ready=lambda: state.ready)
    app.state.service = state
    app.state.metrics = metrics
    app.state.scoring_gate = ScoringGate(
        state.settings.rest_concurrent_scoring, state.settings.rest_waiting_scoring
    )

    _install_error_handlers(app)
    app.include_router(routes_v2.router)
    app.include_router(routes_score.router)
    app.include_router(routes_admin.router)

    @app.get(
        "/metrics",
        tags=["monitoring"],
        summary="Prometheus metrics (text format)",
        response_class=PlainTextResponse,
    )
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Added last = outermost: the cap applies before routing, metrics see every answer.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=state.settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
