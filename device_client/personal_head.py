"""The personalised head while a stream is scored (``secdood-device run --personalize``).

Glue between the clip loop and the :class:`~device_client.personalization.Personalizer`
that :class:`~device_client.keyring.DeviceKeyring` builds: it turns embeddings
into personalised logits, scores with the global head only while there is no Θ
yet and the window is too small to ask for one, and says for every clip which
head scored it and whether the Θ is stale (the cloud was unreachable when a
refresh was due). Each refresh, and each failed one, is noted in the keyring so
``secdood-device status`` can tell when and why.

In per-device mode an optional :class:`~device_client.head_guard.HeadGuard` checks
every new (or restored) Θ on the window it is used for and serves the global head
instead when the personalised one looks wrong; those clips are counted and named
in the report line (``global(guard, v1)``), the ``run --json`` summary and telemetry.

Energy verdicts of the personalised head use their own threshold
(:meth:`PersonalHead.verdict_threshold`): the base model's Energy threshold plus the
offset stored with Θ at its refresh (see :mod:`device_client.personalization`). When
the guard serves the global head the offset is dropped (scaled by the personalised
head's share in blend mode), so global logits keep the global threshold.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from device_client.gateway_client import ServerUnreachableError
from device_client.head_guard import HeadGuard
from device_client.keyring import DeviceKeyring
from device_client.personalization import Personalizer, ThetaSnapshot
from shared.ood.energy import energy


class PersonalHead:
    """Callable head for :meth:`DeviceRuntime.score_clips`: z [N, D] → logits or None."""

    def __init__(
        self,
        personalizer: Personalizer,
        keyring: DeviceKeyring,
        guard: HeadGuard | None = None,
        energy_threshold: float | None = None,
    ) -> None:
        self.personalizer = personalizer
        self.keyring = keyring
        self.guard = guard if personalizer.mode == "per_device" else None
        self.last_head = "global"
        self.clips_global = 0
        #: clips the guard scored with the global head although a Θ was there
        self.clips_guard_fallback = 0
        #: the guard's global-head weight for the last batch (0: personalised head only)
        self.last_guard_weight = 0.0
        #: the base model's Energy threshold (None: verdicts keep the model's thresholds)
        self.energy_threshold = energy_threshold
        self._was_stale = personalizer.stale
        self._guarded: ThetaSnapshot | None = None
        self._guard_window = 0  # clips in the window the guard last checked Θ on

    def __call__(self, features: Tensor) -> Tensor | None:
        z = features.detach().double().numpy()
        p = self.personalizer
        needed = p.min_window if p.mode == "per_device" else 2
        if p.snapshot is None and len(p.selector) + len(z) < needed:
            p.observe(z)  # warming up: no Θ yet and too few clips to ask for one
            return self._global(len(z))
        try:
            logits = p.logits(z)
        except ServerUnreachableError:  # no Θ at all and the cloud is unreachable
            self.keyring.note_refresh("first personalisation", ok=False, detail="unreachable")
            return self._global(len(z))
        if p.stale and not self._was_stale:
            self.keyring.note_refresh(
                "refresh due", ok=False, detail="cloud unreachable: using the cached theta"
            )
        self._was_stale = p.stale
        self.last_head = "personal"
        if self.guard is not None:
            logits = self._guarded_logits(z)
        return logits.float()

    def _guarded_logits(self, z: np.ndarray) -> Tensor:
        """The guard's choice for z: a new Θ is checked first on the window it serves."""
        assert self.guard is not None and self.personalizer.snapshot is not None
        p = self.personalizer
        window = p.selector.window
        # A new Θ (refreshed, or restored from the cache) is checked; a restored one is
        # checked again while the window grows to min_window (one clip says little).
        checked_on_few = self._guard_window < min(p.min_window, len(window))
        if p.snapshot is not self._guarded or checked_on_few:
            assert p.head is not None
            self.guard.refresh(window, p.head)  # the refined head when Θ was refined
            self._guarded, self._guard_window = p.snapshot, len(window)
        # checked on the whole window: one camera clip alone says little about disagreement
        logits = self.guard.logits(z, window=window)
        self.last_guard_weight = self.guard.state.global_weight if self.guard.state else 0.0
        if self.last_guard_weight >= 1.0:
            self.clips_guard_fallback += len(z)
        return logits

    def threshold_offset(self) -> float | None:
        """The Energy-threshold offset for the last batch: Θ's offset times the share of
        the personalised head in its logits (None: global head, or Θ has no offset)."""
        offset = self.personalizer.energy_offset if self.personalizer.mode == "per_device" else None
        if self.last_head == "global" or offset is None:
            return None
        share = 1.0 - self.last_guard_weight if self.guard is not None else 1.0
        return share * offset if share > 0.0 else None

    def verdict_threshold(self, detector: str) -> float | None:
        """The Energy threshold for the last batch's logits (None: the model's own)."""
        offset = self.threshold_offset()
        if detector != "energy" or self.energy_threshold is None or offset is None:
            return None
        return self.energy_threshold + offset

    def _global(self, n: int) -> None:
        self.last_head = "global"
        self.clips_global += n
        return None

    def telemetry(self) -> dict[str, float]:
        """Numbers for the telemetry report (never Θ, never an embedding)."""
        p = self.personalizer
        numbers = {
            "personalised": 1.0,
            "theta_stale": float(p.stale),
            "hypernet_version": float(p.hypernet.version if p.hypernet else 0),
            "theta_refreshes": float(p.refreshes),
        }
        if self.guard is not None:
            numbers["guard_fallback_clips"] = float(self.clips_guard_fallback)
        if self.personalizer.energy_offset is not None:
            numbers["energy_threshold_offset"] = float(self.personalizer.energy_offset)
        return numbers

    def guard_report(self) -> dict[str, float | bool | None] | None:
        """What the guard decided, for ``run --json`` (None without a guard)."""
        if self.guard is None:
            return None
        state = self.guard.state
        return {
            "confidence_slack": self.guard.confidence_slack,
            "fallback_clips": self.clips_guard_fallback,
            "trusted": state.trusted if state else None,
            "msp_personalised": state.msp_personalised if state else None,
            "msp_global": state.msp_global if state else None,
            "disagreement": state.disagreement if state else None,
        }

    def close(self) -> None:
        client = getattr(self.personalizer.transport, "client", None)
        if client is not None:
            client.close()

    def describe(self) -> str:
        """What the last batch was scored with, for the report line."""
        p = self.personalizer
        if self.last_head == "global" or p.hypernet is None:
            return "global"
        status = "" if p.theta_status == "fresh" else f" {p.theta_status}"
        if p.refined:
            status += ", refined, theta classifies" if p.head.classify_with_cloud else ", refined"
        if self.guard is not None and self.last_guard_weight >= 1.0:
            return f"global(guard, v{p.hypernet.version}{status})"
        if self.guard is not None and self.last_guard_weight > 0.0:
            share = f", {100 * self.last_guard_weight:.0f}% global"
            return f"personal(v{p.hypernet.version}{status}{share})"
        return f"personal(v{p.hypernet.version}{status})"


def reference_energy(bundle) -> np.ndarray:
    """The global head's Energy on the model's clean ID reference clips (the anchor of
    the personalised threshold's offset)."""
    return energy(bundle.reference_logits.double()).numpy()


def flag_rates(is_ood: list[bool], truth: list[int] | None) -> dict[str, float | int | None]:
    """Flagged fractions over clips whose truth is known (label >= 0: ID, -1: OOD)."""
    if truth is None:
        return {"id_clips": 0, "ood_clips": 0, "id_flagged_rate": None, "ood_flagged_rate": None}
    known = min(len(is_ood), len(truth))
    flags, labels = np.asarray(is_ood[:known], dtype=bool), np.asarray(truth[:known])
    id_mask, ood_mask = labels >= 0, labels < 0
    return {
        "id_clips": int(id_mask.sum()),
        "ood_clips": int(ood_mask.sum()),
        "id_flagged_rate": float(flags[id_mask].mean()) if id_mask.any() else None,
        "ood_flagged_rate": float(flags[ood_mask].mean()) if ood_mask.any() else None,
    }
