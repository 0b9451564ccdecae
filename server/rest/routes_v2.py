"""Open Inference Protocol (KServe V2) routes: health, metadata and inference.

The served model takes one of two inputs — ``features`` FP32 [N, D] (fused
embeddings) or ``clip`` FP32 [N, T, 3, H, W] in [0, 1] — and returns ``logits``
FP32 [N, C], ``ood_score`` FP32 [N] (higher = more OOD), ``is_ood`` BOOL [N] and
``label`` BYTES [N]. ``parameters.detector`` picks the OOD detector (default
``energy``); the response's ``parameters`` echo it with its threshold.
Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from server.rest.auth import State, require_scoring
from server.rest.inputs import (
    MAX_NAME_CHARS,
    InputError,
    check_detectors,
    check_features,
    clips_to_frames,
)
from server.rest.schemas import (
    ErrorBody,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ServerMetadata,
    TensorMetadata,
)
from server.rest.state import BASE_MODEL_NAME, ModelNotReadyError, ServedModel, ServiceState
from server.rest.v2_codec import (
    BINARY_HEADER,
    INPUT_DATATYPE,
    bool_output,
    bytes_output,
    fp32_output,
    parse_infer_request,
)
from shared.pipeline import DEFAULT_DETECTOR, Verdicts

SERVER_NAME = "secdood"
PLATFORM = "pytorch"
EXTENSIONS = ["binary_tensor_data"]
INPUT_NAMES = ("features", "clip")
OUTPUT_NAMES = ("logits", "ood_score", "is_ood", "label")


def server_version() -> str:
    """The installed ``secdood`` distribution's version (reported by ``GET /v2`` and /docs)."""
    try:
        return package_version("secdood")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (v2)"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 429, 503)
}
#: a model name or version in a path: 1..MAX_NAME_CHARS characters
ModelName = Annotated[str, Path(min_length=1, max_length=MAX_NAME_CHARS)]


def _inline_schema(model: type[InferenceRequest]) -> dict[str, Any]:
    """The model's JSON schema with ``$defs`` inlined (the request body is parsed by hand)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)


def resolve_model(state: ServiceState, name: str, version: str | None) -> ServedModel:
    """The served model if ``name`` (and ``version``, when given) name it; else 404 or 503."""
    served = state.current
    if served is not None and served.record.name == name:
        if version is not None and version != served.version:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"model {name!r} version {version!r} is not served; "
                f"the served version is {served.version!r}",
            )
        return served
    if state.is_base_model_name(name):
        if served is None:
            raise ModelNotReadyError(f"model {name!r} is not loaded yet; retry shortly")
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"model {name!r} is registered but not served; this server serves "
            f"{served.record.name!r}",
        )
    known = served.record.name if served is not None else BASE_MODEL_NAME
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown model {name!r}; try {known!r}")


@router.get("/health/live", summary="Liveness: 200 whenever the process answers")
def health_live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready",
    summary="Readiness: 200 once a model is loaded and the gRPC gateway answers, 503 before",
    responses={503: {"description": "no model loaded yet, or the gRPC gateway is not serving"}},
)
def health_ready(state: State) -> JSONResponse:
    ready = state.ready and state.gateway_serving()
    code = status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse({"ready": ready}, status_code=code)


@router.get("", summary="Server metadata", response_model=ServerMetadata)
def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=server_version(), extensions=EXTENSIONS)


@router.get(
    "/models/{name}",
    summary="Model metadata: inputs and outputs",
    response_model=ModelMetadata,
    responses=_ERRORS,
    dependencies=[Depends(require_scoring)],
)
@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    responses=_ERRORS,
    dependencies=[Depends(require_scoring)],
    include_in_schema=False,
)
def model_metadata(name: ModelName, state: State, version: str | None = None) -> ModelMetadata:
    served = resolve_model(state, name, version)
    config = served.pipeline.bundle.config
    frames = config.n_frames
    return ModelMetadata(
        name=served.record.name,
        versions=[served.version],
        platform=PLATFORM,
        inputs=[
            TensorMetadata(name="features", datatype=INPUT_DATATYPE, shape=[-1, config.embed_dim]),
            TensorMetadata(
                name="clip",
                datatype=INPUT_DATATYPE,
                shape=[-1, frames, 3, config.size, config.size],
            ),
        ],
        outputs=[
            TensorMetadata(name="logits", datatype="FP32", shape=[-1, config.num_classes]),
            TensorMetadata(name="ood_score", datatype="FP32", shape=[-1]),
            TensorMetadata(name="is_ood", datatype="BOOL", shape=[-1]),
            TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
        ],
    )


@router.get(
    "/models/{name}/ready",
    summary="Model readiness: 200 when loaded, 503 while loading, 404 if unknown",
    responses=_ERRORS,
)
@router.get("/models/{name}/versions/{version}/ready", include_in_schema=False)
def model_ready(name: ModelName, state: State, version: str | None = None) -> dict[str, Any]:
    served = resolve_model(state, name, version)
    return {"name": served.record.name, "ready": True}


@router.post(
    "/models/{name}/infer",
    summary="Score features or clips",
    response_model=InferenceResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    dependencies=[Depends(require_scoring)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline_schema(InferenceRequest)}},
        }
    },
)
@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferenceResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    dependencies=[Depends(require_scoring)],
    include_in_schema=False,
)
async def infer(
    name: ModelName,
    request: Request,
    state: State,
    version: str | None = None,
) -> InferenceResponse:
    served = resolve_model(state, name, version)
    async with request.app.state.scoring_gate.slot():
        body = await request.body()
        parsed, arrays = parse_infer_request(body, request.headers.get(BINARY_HEADER))
        _check_outputs(parsed)
        verdicts = await run_in_threadpool(_score, served, parsed, arrays)
    request.app.state.metrics.record_verdicts("v2_infer", verdicts)
    return _response(served, parsed, verdicts)


def _score(served: ServedModel, request: InferenceRequest, arrays: dict[str, Any]) -> Verdicts:
    unknown = sorted(set(arrays) - set(INPUT_NAMES))
    if unknown or len(arrays) != 1:
        raise InputError(
            f"give exactly one input, named 'features' (FP32 [N, D]) or 'clip' "
            f"(FP32 [N, T, 3, H, W]); got {sorted(arrays)}"
        )
    parameters = request.parameters or {}
    detector, _ = check_detectors(
        parameters.get("detector", DEFAULT_DETECTOR), [], served.detectors()
    )
    pipeline = served.pipeline
    if "features" in arrays:
        features = check_features(arrays["features"], pipeline, "input 'features'")
        return pipeline.score_features(features, detector)
    frames = clips_to_frames(arrays["clip"], pipeline, "input 'clip'")
    return pipeline.score_clips(frames, detector)


def _wanted_outputs(request: InferenceRequest) -> list[str]:
    names = [output.name for output in request.outputs] if request.outputs else OUTPUT_NAMES
    return list(dict.fromkeys(names))


def _check_outputs(request: InferenceRequest) -> None:
    unknown = [name for name in _wanted_outputs(request) if name not in OUTPUT_NAMES]
    if unknown:
        raise InputError(f"unknown outputs {unknown}; choose from {list(OUTPUT_NAMES)}")


def _response(
    served: ServedModel, request: InferenceRequest, verdicts: Verdicts
) -> InferenceResponse:
    builders = {
        "logits": lambda: fp32_output("logits", verdicts.logits.numpy()),
        "ood_score": lambda: fp32_output("ood_score", verdicts.ood_score.numpy()),
        "is_ood": lambda: bool_output("is_ood", verdicts.is_ood.numpy()),
        "label": lambda: bytes_output("label", verdicts.labels),
    }
    return InferenceResponse(
        model_name=served.record.name,
        model_version=served.version,
        id=request.id,
        parameters={"detector": verdicts.detector, "threshold": verdicts.threshold},
        outputs=[builders[name]() for name in _wanted_outputs(request)],
    )
