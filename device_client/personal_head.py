"""The personalised head while a stream is scored (``secdood-device run --personalize``).

Glue between the clip loop and the :class:`~device_client.personalization.Personalizer`
that :class:`~device_client.keyring.DeviceKeyring` builds: it turns embeddings
into personalised logits, scores with the global head only while there is no Θ
yet and the window is too small to ask for one, and says for every clip which
head scored it and whether the Θ is stale (the cloud was unreachable when a
refresh was due). Each refresh, and each failed one, is noted in the keyring so
``secdood-device status`` can tell when and why.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from device_client.gateway_client import ServerUnreachableError
from device_client.keyring import DeviceKeyring
from device_client.personalization import Personalizer


class PersonalHead:
    """Callable head for :meth:`DeviceRuntime.score_clips`: z [N, D] → logits or None."""

    def __init__(self, personalizer: Personalizer, keyring: DeviceKeyring) -> None:
        self.personalizer = personalizer
        self.keyring = keyring
        self.last_head = "global"
        self.clips_global = 0
        self._was_stale = personalizer.stale

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
        return logits.float()

    def _global(self, n: int) -> None:
        self.last_head = "global"
        self.clips_global += n
        return None

    def telemetry(self) -> dict[str, float]:
        """Numbers for the telemetry report (never Θ, never an embedding)."""
        p = self.personalizer
        return {
            "personalised": 1.0,
            "theta_stale": float(p.stale),
            "hypernet_version": float(p.hypernet.version if p.hypernet else 0),
            "theta_refreshes": float(p.refreshes),
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
        return f"personal(v{p.hypernet.version}{status})"


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
