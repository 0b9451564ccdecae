"""Pydantic models of every REST request and response body.

The ``/v2`` models follow the Open Inference Protocol (KServe V2) JSON format;
the ``/v1`` models are SecDOOD's own friendlier API. Tensors travel as nested or
flat row-major JSON lists; shapes and datatypes are checked in
:mod:`server.rest.inputs` and :mod:`server.rest.v2_codec`, not here, so that the
error messages can name the tensor and the expected shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator

from server.registry import DeviceRecord, JobRecord, JobState, ModelRecord
from server.rest.inputs import MAX_NAME_CHARS, MAX_TENSOR_DIMS

#: most detectors one request may list, most inputs/outputs one V2 request may name
MAX_LIST_NAMES = 32
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]

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

    name: Name
    shape: list[NonNegativeInt] = Field(max_length=MAX_TENSOR_DIMS)
    datatype: Name
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    name: Name
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """V2 inference request; ``parameters.detector`` picks the OOD detector (default energy)."""

    id: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=MAX_LIST_NAMES)
    outputs: list[RequestOutput] | None = Field(None, max_length=MAX_LIST_NAMES)


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
    detector: Name = "energy"
    detectors: list[Name] | None = Field(None, max_length=MAX_LIST_NAMES)

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
    model_config = ConfigDict(from_attributes=True)

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
    served: bool = Field(False, description="whether this is the model the REST API scores with")

    @classmethod
    def of(cls, record: ModelRecord, served: ModelRecord | None) -> ModelView:
        view = cls.model_validate(record)
        view.served = served is not None and served.id == record.id
        return view


class DeviceView(BaseModel):
    """An enrolled device; its token (hash) is never part of any response."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    profile: dict[str, Any]
    created_at: datetime
    last_seen: datetime | None

    @classmethod
    def of(cls, record: DeviceRecord) -> DeviceView:
        return cls.model_validate(record)


class JobCreate(BaseModel):
    """Start a training job of ``method`` (see ``secdood-server methods``) with ``config``."""

    model_config = ConfigDict(extra="forbid")

    method: Name
    config: dict[str, Any] = Field(default_factory=dict)


class JobView(BaseModel):
    """A training job; ``progress`` is the fraction done in [0, 1]."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    method: str
    config: dict[str, Any]
    state: JobState
    progress: float
    message: str
    result: dict[str, Any] | None
    model: ModelView | None = Field(
        None, description="the model the job registered, once succeeded"
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    log: str | None = Field(None, description="training log (only on GET /v1/jobs/{id})")

    @classmethod
    def of(
        cls, record: JobRecord, model: ModelRecord | None, served: ModelRecord | None, log: bool
    ) -> JobView:
        view = cls.model_validate(record)
        view.model = None if model is None else ModelView.of(model, served)
        view.log = record.log if log else None
        return view
