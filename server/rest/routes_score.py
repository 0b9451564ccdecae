"""``POST /v1/ood/score``: the friendly scoring endpoint (JSON features or clips, or a video).

- ``application/json``: a :class:`~server.rest.schemas.ScoreRequest`; answers a
  :class:`~server.rest.schemas.ScoreResult` — scalars when one item was scored
  (``features`` [D] or [1, D], ``clip`` [T, 3, H, W] or [1, T, 3, H, W]),
  lists with one entry per item when N > 1.
- ``multipart/form-data``: a video file in field ``file`` (and optionally a
  ``detector`` field); it is written to a temporary file, cut into consecutive
  clips of the model's length and size, and answered with one verdict per clip
  (:class:`~server.rest.schemas.VideoScoreResult`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request, status
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.rest.auth import State, require_scoring
from server.rest.inputs import (
    MAX_NAME_CHARS,
    InputError,
    check_detectors,
    check_features,
    clips_to_frames,
    parse_json_body,
    to_float_array,
)
from server.rest.schemas import (
    ClipVerdict,
    ErrorBody,
    ScoreRequest,
    ScoreResult,
    VideoScoreResult,
)
from server.rest.state import ServedModel
from shared.data.video_io import VideoError, iter_clips
from shared.pipeline import DEFAULT_DETECTOR, Verdicts

#: clips of an uploaded video scored per forward pass (bounds memory for long videos)
VIDEO_BATCH_CLIPS = 32
#: bytes copied per read when spooling an upload to its temporary file
COPY_CHUNK_BYTES = 1024 * 1024
#: a multipart body carries one file and at most this many fields (file, detector, ...)
MAX_FORM_FILES = 1
MAX_FORM_FIELDS = 4

router = APIRouter(prefix="/v1/ood", tags=["OOD scoring (v1)"])

_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": ScoreRequest.model_json_schema()},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "a video"},
                    "detector": {"type": "string", "default": DEFAULT_DETECTOR},
                },
            }
        },
    },
}


@router.post(
    "/score",
    summary="Score features, clips or an uploaded video",
    response_model=ScoreResult | VideoScoreResult,
    responses={code: {"model": ErrorBody} for code in (401, 403, 413, 415, 422, 429, 503)},
    dependencies=[Depends(require_scoring)],
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def score(request: Request, state: State) -> ScoreResult | VideoScoreResult:
    served = state.served()
    content_type = request.headers.get("content-type", "application/json").lower()
    metrics = request.app.state.metrics
    is_upload = content_type.startswith("multipart/form-data")
    if not is_upload and not content_type.startswith("application/json"):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"unsupported content type {content_type[:MAX_NAME_CHARS]!r}; send "
            "application/json or multipart/form-data with a video in field 'file'",
        )
    async with request.app.state.scoring_gate.slot():
        if is_upload:
            result, verdicts = await _score_upload(request, served, state.settings.max_upload_bytes)
        else:
            parsed = parse_json_body(await request.body(), ScoreRequest, "score request")
            result, verdicts = await run_in_threadpool(_score_json, served, parsed)
    for batch in verdicts:
        metrics.record_verdicts("v1_score", batch)
    return result


def _score_json(served: ServedModel, request: ScoreRequest) -> tuple[ScoreResult, list[Verdicts]]:
    pipeline = served.pipeline
    detector, extra = check_detectors(request.detector, request.detectors, served.detectors())
    if request.features is not None:
        array = to_float_array(request.features, "features")
        features = check_features(array[None] if array.ndim == 1 else array, pipeline)
        verdicts = pipeline.score_features(features, detector, extra)
    else:
        array = to_float_array(request.clip, "clip")
        frames = clips_to_frames(array[None] if array.ndim == 4 else array, pipeline)
        verdicts = pipeline.score_clips(frames, detector, extra)
    return _score_result(verdicts), [verdicts]


def _score_result(verdicts: Verdicts) -> ScoreResult:
    count = len(verdicts.labels)

    def unwrap(values: list[Any]) -> Any:
        return values[0] if count == 1 else values

    return ScoreResult(
        count=count,
        label=unwrap(verdicts.labels),
        ood_score=unwrap(verdicts.ood_score.tolist()),
        is_ood=unwrap(verdicts.is_ood.tolist()),
        threshold=verdicts.threshold,
        detector=verdicts.detector,
        scores={name: unwrap(score.tolist()) for name, score in verdicts.scores.items()},
    )


async def _score_upload(
    request: Request, served: ServedModel, max_bytes: int
) -> tuple[VideoScoreResult, list[Verdicts]]:
    try:
        form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS)
    except StarletteHTTPException as exc:  # the multipart parser: malformed or past a limit
        if exc.status_code != status.HTTP_400_BAD_REQUEST:
            raise
        raise InputError(f"unreadable multipart body: {exc.detail}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InputError("the multipart body needs a video file in field 'file'")
        detector = form.get("detector", DEFAULT_DETECTOR)
        detector, extra = check_detectors(detector, None, served.detectors())
        if upload.filename is not None and len(upload.filename) > MAX_NAME_CHARS:
            raise InputError(
                f"upload file name has {len(upload.filename)} characters; the limit is "
                f"{MAX_NAME_CHARS}"
            )
        suffix = _safe_suffix(upload.filename)
        with tempfile.TemporaryDirectory(prefix="secdood-upload-") as folder:
            path = Path(folder) / f"upload{suffix}"
            with path.open("wb") as target:
                await run_in_threadpool(_copy_capped, upload.file, target, max_bytes)
            return await run_in_threadpool(
                _score_video, served, path, upload.filename, detector, extra
            )
    finally:
        await form.close()


def _safe_suffix(filename: str | None) -> str:
    """The file name's extension if it is short and plain (it picks the decoder), else .mp4."""
    suffix = Path(filename or "").suffix
    if 1 < len(suffix) <= 8 and suffix[1:].isalnum() and suffix.isascii():
        return suffix
    return ".mp4"


def _copy_capped(source: BinaryIO, target: BinaryIO, max_bytes: int) -> None:
    """Copy in chunks; 413 as soon as more than ``max_bytes`` have been seen."""
    copied = 0
    while chunk := source.read(COPY_CHUNK_BYTES):
        copied += len(chunk)
        if copied > max_bytes:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"uploaded file is larger than the server's limit of {max_bytes} bytes",
            )
        target.write(chunk)
    target.flush()
    os.fsync(target.fileno())


def _score_video(
    served: ServedModel,
    path: Path,
    filename: str | None,
    detector: str,
    extra: tuple[str, ...],
) -> tuple[VideoScoreResult, list[Verdicts]]:
    config = served.pipeline.bundle.config
    batches: list[Verdicts] = []
    pending: list[np.ndarray] = []
    try:
        for clip in iter_clips(path, n_frames=config.n_frames, size=config.size):
            pending.append(clip)
            if len(pending) == VIDEO_BATCH_CLIPS:
                batches.append(served.pipeline.score_clips(np.stack(pending), detector, extra))
                pending = []
        if pending:
            batches.append(served.pipeline.score_clips(np.stack(pending), detector, extra))
    except VideoError as exc:
        name = filename or "the upload"
        raise InputError(f"cannot score {name!r}: {str(exc).replace(str(path), name)}") from None

    clips: list[ClipVerdict] = []
    for batch in batches:
        for row, label in enumerate(batch.labels):
            index = len(clips)
            clips.append(
                ClipVerdict(
                    index=index,
                    start_frame=index * config.n_frames,
                    label=label,
                    ood_score=float(batch.ood_score[row]),
                    is_ood=bool(batch.is_ood[row]),
                    scores={name: float(score[row]) for name, score in batch.scores.items()},
                )
            )
    result = VideoScoreResult(
        filename=filename,
        detector=detector,
        threshold=served.pipeline.threshold(detector),
        count=len(clips),
        ood_count=sum(clip.is_ood for clip in clips),
        clips=clips,
    )
    return result, batches
