"""A per-device Θ as the device keeps it, and the offset of its verdict threshold.

A :class:`ThetaSnapshot` is what :class:`~device_client.personalization.Personalizer`
caches after a refresh and :mod:`device_client.keyring` saves to ``theta.json`` (all of it
but the refined head, which the device recomputes from its window). :func:`energy_offset`
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

from dataclasses import dataclass

import numpy as np
import torch

from device_client.head_refinement import GaussianHead


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
    #: Θ refined on the window (memory only; None: not refined, Θ is used as it came)
    refined: RefinedHead | None = None


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
