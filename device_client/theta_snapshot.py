"""A per-device Θ as the device keeps it, and the offset of its verdict threshold.

A :class:`ThetaSnapshot` is what :class:`~device_client.personalization.Personalizer`
caches after a refresh and :mod:`device_client.keyring` saves: ``theta.json``
(:class:`CachedTheta`) and, for its refined head, an ``.npz``
(:func:`refined_to_bytes`). :func:`energy_offset`
is the personalised threshold's offset:

The base model's Energy threshold is calibrated on the global head's scores, and a
personalised head scores on its own scale. At each refresh the Personalizer therefore
stores an Energy offset with Θ: the ``threshold_quantile`` of the window's Energy under Θ
minus the same quantile of the global head's Energy on the model's clean reference
features. The device flags a clip when its personalised Energy exceeds the base threshold
plus that offset. A quantile at or below the median stays on the window's ID mass while
most of the window is ID, so the offset follows how the personalised head moved the ID
scores, not the OOD clips in the window. A refined head gets its own offset, from scores
of window clips under heads refined without them.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from device_client.head_refinement import GaussianHead
from shared.familiarity import FamiliarityReference


@dataclass(frozen=True)
class HyperNetIdentity:
    """Which registered HyperNetwork produced a Θ (from the Personalize reply)."""

    name: str
    version: int
    sha256: str


@dataclass(frozen=True)
class RefinedHead:
    """The cloud's Θ refined on the device's window, with its own score scale."""

    head: GaussianHead
    score_reference: tuple[float, float]  # mean and std of the window's Energy under it
    energy_offset: float | None
    window_clips: int  # how many clips it was refined on
    #: the window mean's distance from H's training devices (shared.familiarity; None:
    #: no reference), which decided whether Θ classifies (``head.classify_with_cloud``)
    familiarity: float | None = None


@dataclass(frozen=True)
class ThetaSnapshot:
    """Everything needed to use a per-device Θ again after a restart (no network)."""

    theta: np.ndarray  # [D·C + C]
    indices: np.ndarray  # the channels it was generated from
    score_reference: tuple[float, float]  # mean and std of the window's Energy scores then
    hypernet: HyperNetIdentity
    refreshed_at: float  # UNIX seconds
    reason: str  # why it was refreshed
    #: add to the base model's Energy threshold for this Θ (None: no reference to compare with)
    energy_offset: float | None = None
    #: Θ refined on the window (saved beside theta.json; None: Θ is used as it came)
    refined: RefinedHead | None = None
    #: H's training devices' window means, sent with Θ (saved beside theta.json)
    familiarity: FamiliarityReference | None = None


def energy_offset(
    window_energy: np.ndarray | torch.Tensor,
    reference_energy: np.ndarray | torch.Tensor,
    quantile: float,
) -> float:
    """How far a personalised head moved the Energy scale: the ``quantile`` of the window's
    Energy under Θ minus the same quantile of the global head's Energy on clean ID."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    window = np.asarray(window_energy, dtype=np.float64)
    reference = np.asarray(reference_energy, dtype=np.float64)
    if window.size == 0 or reference.size == 0:
        raise ValueError("energy_offset needs a non-empty window and reference")
    return float(np.quantile(window, quantile) - np.quantile(reference, quantile))


@dataclass(frozen=True)
class CachedTheta:
    """A per-device Θ as saved on disk, with what it belongs to."""

    snapshot: ThetaSnapshot
    model_key: str  # the base model whose embeddings it classifies (name and version, or sha256)
    alpha: float
    encrypted: bool

    def to_json(self) -> dict[str, Any]:
        s = self.snapshot
        return {
            "theta": s.theta.tolist(),
            "indices": [int(i) for i in s.indices],
            "score_reference": list(s.score_reference),
            "hypernet": asdict(s.hypernet),
            "refreshed_at": s.refreshed_at,
            "reason": s.reason,
            "energy_offset": s.energy_offset,
            "model_key": self.model_key,
            "alpha": self.alpha,
            "encrypted": self.encrypted,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CachedTheta:
        mean, std = data["score_reference"]
        snapshot = ThetaSnapshot(
            theta=np.asarray(data["theta"], dtype=np.float64),
            indices=np.asarray(data["indices"], dtype=np.int64),
            score_reference=(float(mean), float(std)),
            hypernet=HyperNetIdentity(**data["hypernet"]),
            refreshed_at=float(data["refreshed_at"]),
            reason=str(data["reason"]),
            energy_offset=_optional_float(data.get("energy_offset")),
        )
        return cls(snapshot, str(data["model_key"]), float(data["alpha"]), data["encrypted"])


def _optional_float(value: Any) -> float | None:
    """A cached number that older theta.json files lack (None there)."""
    return None if value is None else float(value)


def _theta_digest(theta: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(theta, dtype=np.float64).tobytes()).hexdigest()


def refined_to_bytes(refined: RefinedHead, theta: np.ndarray) -> bytes:
    """The refined head of ``theta`` as an ``.npz`` (it carries two D×D precisions, too many
    numbers for theta.json), tagged with Θ's digest so it is never paired with another Θ."""
    head = refined.head
    buffer = io.BytesIO()
    np.savez(
        buffer,
        theta_sha256=np.array(_theta_digest(theta)),
        score_reference=np.array(refined.score_reference),
        energy_offset=np.array(np.nan if refined.energy_offset is None else refined.energy_offset),
        window_clips=np.array(refined.window_clips),
        familiarity=np.array(np.nan if refined.familiarity is None else refined.familiarity),
        **{name: np.asarray(value) for name, value in asdict(head).items()},
    )
    return buffer.getvalue()


def refined_from_bytes(data: bytes, theta: np.ndarray) -> RefinedHead | None:
    """The refined head saved for ``theta``; None when the file belongs to another Θ or is
    damaged (the device then refines again once its window is full)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as saved:
            if str(saved["theta_sha256"]) != _theta_digest(theta):
                return None
            arrays = {f.name: saved[f.name] for f in fields(GaussianHead) if f.name in saved}
            scalars = {
                "cloud_weight": float(arrays["cloud_weight"]),
                # saved before the familiarity gate: the refined head classified
                "classify_with_cloud": bool(arrays.get("classify_with_cloud", False)),
            }
            head = GaussianHead(**arrays | scalars)
            mean, std = (float(x) for x in saved["score_reference"])
            offset = float(saved["energy_offset"])
            clips = int(saved["window_clips"])
            ratio = float(saved["familiarity"]) if "familiarity" in saved else np.nan
    except (OSError, KeyError, ValueError, TypeError):
        return None
    shapes_ok = head.kernel.shape == head.cloud_kernel.shape and head.precision.shape == (
        head.embed_dim,
        head.embed_dim,
    )
    if not shapes_ok or not all(np.isfinite(a).all() for a in (head.kernel, head.precision)):
        return None
    return RefinedHead(
        head, (mean, std), None if np.isnan(offset) else offset, clips,
        None if np.isnan(ratio) else ratio,
    )  # fmt: skip
