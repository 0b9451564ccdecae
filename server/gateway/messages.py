"""Protobuf messages from devices → the registry's JSON forms, after range checks.

What a device may put in a profile or a telemetry report is checked here, once,
so the servicer stays a thin mapping; every refusal is a ``ValueError`` with a
message naming the field and the limit (INVALID_ARGUMENT on the wire).
"""

from __future__ import annotations

import math
from typing import Any

from shared.data.corruptions import CORRUPTIONS
from shared.rpc import gateway_pb2

#: largest severity of the corruption suite; 0 means "no corruption"
MAX_SEVERITY = 5
MAX_PROFILE_TEXT = 100
MAX_DEVICE_NAME = 200
MAX_TELEMETRY_METRICS = 64


def device_name(name: str) -> str:
    """A device name: not blank, at most :data:`MAX_DEVICE_NAME` characters."""
    if not name.strip():
        raise ValueError("device name must not be empty")
    if len(name) > MAX_DEVICE_NAME:
        raise ValueError(f"device name has {len(name)} characters; the limit is {MAX_DEVICE_NAME}")
    return name


def profile_dict(profile: gateway_pb2.DeviceProfile) -> dict[str, Any]:
    """The registry's JSON form of a device profile."""
    for field in ("corruption", "hardware"):
        if len(getattr(profile, field)) > MAX_PROFILE_TEXT:
            raise ValueError(f"profile.{field} must be at most {MAX_PROFILE_TEXT} characters")
    if not 0 <= profile.severity <= MAX_SEVERITY:
        raise ValueError(f"profile.severity must be in 0..{MAX_SEVERITY}, got {profile.severity}")
    if profile.corruption and profile.severity == 0:
        raise ValueError("profile.severity must be 1..5 when profile.corruption is set")
    if not profile.corruption and profile.severity:
        raise ValueError("profile.severity is set but profile.corruption is empty")
    if profile.corruption and profile.corruption not in CORRUPTIONS:
        raise ValueError(
            f"unknown profile.corruption {profile.corruption!r}; expected one of "
            f"{', '.join(CORRUPTIONS)}"
        )
    return {
        "corruption": profile.corruption,
        "severity": profile.severity,
        "hardware": profile.hardware,
    }


def telemetry_payload(report: gateway_pb2.TelemetryReport) -> dict[str, Any]:
    """The registry's JSON form of a telemetry report; NaN/inf and negatives are refused."""
    numbers = {
        "mean_latency_ms": report.mean_latency_ms,
        "frames_per_second": report.frames_per_second,
    }
    if len(report.metrics) > MAX_TELEMETRY_METRICS:
        raise ValueError(
            f"at most {MAX_TELEMETRY_METRICS} telemetry metrics, got {len(report.metrics)}"
        )
    for name, value in report.metrics.items():
        if not name or len(name) > MAX_PROFILE_TEXT:
            raise ValueError(f"telemetry metric names must be 1..{MAX_PROFILE_TEXT} characters")
        if not math.isfinite(value):
            raise ValueError(f"telemetry metric {name!r} is {value}; values must be finite")
    for name, value in numbers.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"telemetry {name} is {value}; it must be a finite number >= 0")
    if report.ood_flagged > report.clips_scored:
        raise ValueError(
            f"telemetry ood_flagged ({report.ood_flagged}) exceeds clips_scored "
            f"({report.clips_scored})"
        )
    sha = report.model_sha256
    if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise ValueError("telemetry model_sha256 must be empty or 64 lowercase hex characters")
    return {
        "clips_scored": report.clips_scored,
        "ood_flagged": report.ood_flagged,
        **numbers,
        "model_sha256": sha,
        "metrics": dict(report.metrics),
    }
