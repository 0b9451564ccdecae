"""Pydantic models of every REST request and response body.

The ``/v2`` models follow the Open Inference Protocol (KServe V2) JSON format;
the ``/v1`` models are SecDOOD's own friendlier API. Tensors travel as nested or
flat row-major JSON lists; shapes and datatypes are checked in
:mod:`server.rest.inputs` and :mod:`server.rest.v2_codec`, not here, so that the
error messages can name the tensor and the expected shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator

from server.registry import DeviceRecord, JobRecord, ModelRecord

# -- errors ----------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every error response: ``{"error": "<what was wrong and what was expected>"}``."""

    error: str


# -- Open Inference Protocol (/v2) -----------------------------------------------------------


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    """Name, datatype and shape of a model input or output; -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(BaseModel):
    """One input tensor; ``data`` is flat row-major or nested, or absent when sent as binary."""

    name: str
    shape: list[NonNegativeInt]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """V2 inference request; ``parameters.detector`` picks the OOD detector (default energy)."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class InferenceResponse(BaseModel):
    """V2 inference response; ``parameters`` carries the detector name and its threshold."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


# -- /v1/ood/score ---------------------------------------------------------------------------


class ScoreRequest(BaseModel):
    """Score embeddings or clips; give exactly one of ``features`` and ``clip``.

    ``features``: [D] or [N, D] floats. ``clip``: [T, 3, H, W] or [N, T, 3, H, W]
    floats in [0, 1] (RGB). ``detectors`` lists the detectors reported in
    ``scores`` (default: all); ``detector`` decides the verdict.
    """

    model_config = ConfigDict(extra="forbid")

    features: list[Any] | None = None
    clip: list[Any] | None = None
    detector: str = "energy"
    detectors: list[str] | None = None

    @model_validator(mode="after")
    def _exactly_one_input(self) -> ScoreRequest:
        if (self.features is None) == (self.clip is None):
            raise ValueError("give exactly one of 'features' ([N, D]) and 'clip' ([N, T, 3, H, W])")
        return self


class ScoreResult(BaseModel):
    """Verdicts: scalars when one item was scored, lists (one entry per item) when N > 1."""

    count: int = Field(description="number of items scored (N)")
    label: str | list[str]
    ood_score: float | list[float] = Field(description="higher = more OOD")
    is_ood: bool | list[bool] = Field(description="ood_score > threshold")
    threshold: float
    detector: str
    scores: dict[str, float | list[float]] = Field(description="score of every listed detector")


class ClipVerdict(BaseModel):
    """The verdict on one clip of an uploaded video."""

    index: int
    start_frame: int
    label: str
    ood_score: float
    is_ood: bool
    scores: dict[str, float]


class VideoScoreResult(BaseModel):
    filename: str | None
    detector: str
    threshold: float
    count: int
    ood_count: int
    clips: list[ClipVerdict]


# -- /v1 admin resources ---------------------------------------------------------------------


class ModelView(BaseModel):
    id: int
    name: str
    version: int
    variant: str
    method: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    artifact_sha256: str
    size_bytes: int
    created_at: datetime
    served: bool = Field(description="whether this is the model the REST API scores with")

    @classmethod
    def of(cls, record: ModelRecord, served: ModelRecord | None) -> ModelView:
        return cls(
            id=record.id,
            name=record.name,
            version=record.version,
            variant=record.variant,
            method=record.method,
            config=record.config,
            metrics=record.metrics,
            artifact_sha256=record.artifact_sha256,
            size_bytes=record.size_bytes,
            created_at=record.created_at,
            served=served is not None and served.id == record.id,
        )


class DeviceView(BaseModel):
    """An enrolled device; its token (hash) is never part of any response."""

    id: str
    name: str
    profile: dict[str, Any]
    created_at: datetime
    last_seen: datetime | None

    @classmethod
    def of(cls, record: DeviceRecord) -> DeviceView:
        return cls(
            id=record.id,
            name=record.name,
            profile=record.profile,
            created_at=record.created_at,
            last_seen=record.last_seen,
        )


class JobCreate(BaseModel):
    """Start a training job of ``method`` (see ``secdood-server methods``) with ``config``."""

    model_config = ConfigDict(extra="forbid")

    method: str
    config: dict[str, Any] = Field(default_factory=dict)


class JobView(BaseModel):
    """A training job; ``progress`` is the fraction done in [0, 1]."""

    id: str
    method: str
    config: dict[str, Any]
    state: str
    progress: float
    message: str
    result: dict[str, Any] | None
    model: ModelView | None = Field(description="the model the job registered, once succeeded")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    log: str | None = Field(None, description="training log (only on GET /v1/jobs/{id})")

    @classmethod
    def of(
        cls, record: JobRecord, model: ModelRecord | None, served: ModelRecord | None, log: bool
    ) -> JobView:
        return cls(
            id=record.id,
            method=record.method,
            config=record.config,
            state=record.state.value,
            progress=record.progress,
            message=record.message,
            result=record.result,
            model=None if model is None else ModelView.of(model, served),
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            log=record.log if log else None,
        )
