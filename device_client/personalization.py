"""The device half of SecDOOD personalisation: select → encrypt → Personalize → decrypt → logits.

:class:`Personalizer` turns the device's embeddings into personalised logits with the
cloud's HyperNetwork, never sending a channel it did not select, nor anything unencrypted
unless ``encrypted=False`` (trusted network, benchmarks: plain numbers, same code path).
Modes: ``"per_sample"`` (the paper: one round trip per embedding, Θ = H(z ⊙ mask)) and
``"per_device"`` (one round trip per *refresh*, Θ = H(window mean ⊙ mask) — H is affine,
so the mean of the per-sample Θs — cached and used locally, offline too).

Drift rule for refreshing the per-device Θ (checked on every :meth:`logits` call once the
window is full): refresh when fewer than ``min_overlap`` (½) of the cached channels are
still in the current top-α set, or when the window's mean Energy moved by more than
``score_shift`` (3) standard deviations of the scores at the last refresh; also for a Θ
restored from disk (:meth:`Personalizer.restore`) and one older than ``max_age_s``. When
the cloud is unreachable the cached Θ stays in use, :attr:`stale` is set, and the refresh
is retried every ``retry_every`` clips. Verdict threshold: an Energy offset stored with Θ
at each refresh (:func:`energy_offset`, :mod:`device_client.theta_snapshot`).

Refinement (per-device mode, on by default): once the window holds
``refinement.min_window`` clips, Θ is refined on it without labels or backprop
(:mod:`device_client.head_refinement`); the refined head classifies and scores until the
next refresh — except on a camera familiar to H (the window mean within ``familiar_ratio``
of H's training devices, :mod:`shared.familiarity`), where Θ classifies and the refined
head scores — with a score reference and offset from its window scores (quantile 0.7,
:class:`RefinementSettings`); saved with Θ, refined again offline when missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import tenseal as ts
import torch

from device_client.channel_selection import DEFAULT_WINDOW, ChannelSelector, SelectionMethod
from device_client.gateway_client import PersonalizeTransport, ServerUnreachableError
from device_client.head_refinement import (
    GaussianHead,
    RefinementSettings,
    familiarity_gate,
    offset_scores,
    refine_head,
)
from device_client.theta_snapshot import (
    HyperNetIdentity,
    RefinedHead,
    ThetaSnapshot,
    energy_offset,
)
from shared.channel_importance import DEFAULT_ALPHA
from shared.familiarity import FAMILIAR_RATIO, FamiliarityReference, reference_after_reply
from shared.he import decrypt_theta, encrypt_selected
from shared.hypernet import personalised_logits
from shared.ood.energy import energy

PersonalizeMode = Literal["per_sample", "per_device"]
ScoreScale = tuple[float, float]  # mean and std of a window's Energy under a head

#: the quantile of the window's Energy under Θ (and of the reference under the global head)
#: that sets the offset of Θ's threshold; chosen by ``bench/personal_threshold.py``
THRESHOLD_QUANTILE = 0.6
#: how a per-device Θ is refined on the window by default (see :mod:`device_client.head_refinement`)
DEFAULT_REFINEMENT = RefinementSettings()


@dataclass
class WireStats:
    """Totals over this Personalizer's round trips (protobuf bytes, cloud seconds)."""

    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    he_seconds: float = 0.0


class Personalizer:
    """Personalised logits for one device, encrypted (default) or plaintext."""

    def __init__(
        self,
        transport: PersonalizeTransport,
        embed_dim: int,
        num_classes: int,
        context: ts.Context | None = None,
        alpha: float = DEFAULT_ALPHA,
        selection: SelectionMethod = "importance",
        mode: PersonalizeMode = "per_device",
        window: int = DEFAULT_WINDOW,
        min_overlap: float = 0.5,
        score_shift: float = 3.0,
        seed: int | None = None,
        max_age_s: float | None = None,
        retry_every: int = 16,
        min_window: int = 2,
        on_refresh: Callable[[ThetaSnapshot], None] | None = None,
        reference_energy: np.ndarray | None = None,
        threshold_quantile: float = THRESHOLD_QUANTILE,
        refinement: RefinementSettings | None = DEFAULT_REFINEMENT,
        familiar_ratio: float | None = FAMILIAR_RATIO,
        embedding_kind: str = "none",
    ) -> None:
        if mode not in ("per_sample", "per_device"):
            raise ValueError(f"mode must be 'per_sample' or 'per_device', got {mode!r}")
        if context is not None and not context.is_private():
            raise ValueError("encrypted mode needs the device's private context (secret key)")
        if not 0.0 <= min_overlap <= 1.0 or score_shift <= 0:
            raise ValueError("min_overlap must be in [0, 1] and score_shift > 0")
        if (max_age_s is not None and not max_age_s > 0) or retry_every < 1:
            raise ValueError("max_age_s must be > 0 (or None) and retry_every >= 1")
        if not 2 <= min_window <= window:
            raise ValueError(f"min_window must be in [2, window = {window}], got {min_window}")
        if not 0.0 < threshold_quantile < 1.0:
            raise ValueError(f"threshold_quantile must be in (0, 1), got {threshold_quantile}")
        if familiar_ratio is not None and not (np.isfinite(familiar_ratio) and familiar_ratio > 0):
            raise ValueError(
                f"familiar_ratio must be a positive number or None, got {familiar_ratio}"
            )
        self.transport = transport
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.context = context
        self.mode: PersonalizeMode = mode
        self.selector = ChannelSelector(embed_dim, alpha, selection, window, seed)
        self.min_overlap = min_overlap
        self.score_shift = score_shift
        self.stats = WireStats()
        self.max_age_s = max_age_s
        self.retry_every = retry_every
        #: embeddings the window must hold before an automatic refresh
        self.min_window = min_window
        self.on_refresh = on_refresh
        #: the global head's Energy on clean ID clips (None: no threshold offset is computed)
        self.reference_energy = (
            None if reference_energy is None else np.asarray(reference_energy, dtype=np.float64)
        )
        self.threshold_quantile = threshold_quantile
        #: how Θ is refined on the window (None: used as the cloud sent it); per-device only
        self.refinement = refinement if mode == "per_device" else None
        #: Θ classifies when the window's familiarity ratio is at most this (None: never)
        self.familiar_ratio = familiar_ratio
        #: H's training devices' window means, as the cloud last sent them
        self.familiarity: FamiliarityReference | None = None
        #: the embeddings this device sends (shared.embedding_adaptation key), named per request
        self.embedding_kind = embedding_kind
        #: the last Θ could not be refreshed because the cloud was unreachable
        self.stale = False
        self.refreshes = 0
        #: the HyperNetwork of the last reply (per-sample) or of the cached Θ
        self.hypernet: HyperNetIdentity | None = None
        self.snapshot: ThetaSnapshot | None = None
        #: why a refresh is due before the drift rule says so (e.g. a restored Θ); None if not
        self._due: str | None = None
        self._clips_since_attempt = 0

    @property
    def encrypted(self) -> bool:
        return self.context is not None

    @property
    def theta_size(self) -> int:
        return self.embed_dim * self.num_classes + self.num_classes

    @property
    def energy_offset(self) -> float | None:
        """The Energy-threshold offset of the head in use (None before a refresh or without
        one): the refined head's when Θ was refined, else the cached Θ's."""
        if self.snapshot is None:
            return None
        if self.snapshot.refined is not None:
            return self.snapshot.refined.energy_offset
        return self.snapshot.energy_offset

    @property
    def head(self) -> np.ndarray | GaussianHead | None:
        """What scores clips now: the refined head, else the cached Θ (None before one)."""
        if self.snapshot is None:
            return None
        return self.snapshot.refined.head if self.snapshot.refined else self.snapshot.theta

    @property
    def refined(self) -> bool:
        """Whether the head in use is the cloud's Θ refined on the window."""
        return self.snapshot is not None and self.snapshot.refined is not None

    @property
    def theta(self) -> np.ndarray | None:
        """The cached per-device Θ [D·C + C] (None before the first refresh)."""
        return None if self.snapshot is None else self.snapshot.theta

    @property
    def theta_status(self) -> str:
        """``"none"``, ``"fresh"`` (refreshed in this process), ``"cached"`` (restored from
        disk, not yet confirmed) or ``"stale"`` (a refresh was due; the cloud was unreachable).
        Per-sample mode asks for a fresh Θ for every clip."""
        if self.mode == "per_sample":
            return "fresh" if self.hypernet is not None else "none"
        if self.snapshot is None:
            return "none"
        if self.stale:
            return "stale"
        return "cached" if self._due == RESTORED else "fresh"

    def restore(self, snapshot: ThetaSnapshot) -> None:
        """Use a Θ saved by an earlier run at once; it is refreshed once a window is seen."""
        theta = np.asarray(snapshot.theta, dtype=np.float64)
        if theta.shape != (self.theta_size,):
            raise ValueError(f"cached theta has {theta.size} values, expected {self.theta_size}")
        self.snapshot = snapshot
        self.hypernet = snapshot.hypernet
        self.familiarity = snapshot.familiarity
        self._due = RESTORED

    def observe(self, embeddings: np.ndarray) -> None:
        """Feed recent embeddings [N, D] into the selection window (no network)."""
        self.selector.observe(embeddings)

    def request_theta(self, z: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """One round trip: send z[indices] (encrypted or plain), return Θ [D·C + C]."""
        z = np.asarray(z, dtype=np.float64)
        if z.shape != (self.embed_dim,):
            raise ValueError(f"z must be one embedding [{self.embed_dim}], got {list(z.shape)}")
        index_list = [int(i) for i in indices]
        alpha = self.selector.alpha
        held = self.familiarity.sha256 if self.familiarity is not None else ""
        said = {"familiarity_sha256": held, "embedding_kind": self.embedding_kind}
        if self.context is not None:
            ciphertext = encrypt_selected(self.context, z, np.asarray(indices))
            reply = self.transport.personalize(alpha, index_list, encrypted=ciphertext, **said)
            theta = decrypt_theta(self.context, reply.theta_ciphertexts, self.theta_size)
        else:
            reply = self.transport.personalize(alpha, index_list, plain=z[indices].tolist(), **said)
            theta = np.asarray(reply.theta_plain, dtype=np.float64)
            if theta.shape != (self.theta_size,):
                raise ValueError(f"cloud sent {theta.size} values, expected {self.theta_size}")
        self.stats.requests += 1
        self.stats.bytes_up += reply.bytes_up
        self.stats.bytes_down += reply.bytes_down
        self.stats.he_seconds += reply.he_seconds
        self.hypernet = HyperNetIdentity(reply.model_name, reply.model_version, reply.model_sha256)
        self.familiarity = reference_after_reply(
            self.familiarity, reply.familiarity_sha256, reply.familiarity, self.embed_dim
        )
        return theta

    def refresh(self, reason: str = "requested") -> np.ndarray:
        """Per-device Θ from the window mean; cached with its selection and score reference."""
        window = self.selector.window
        if len(window) < 2:
            raise ValueError("observe at least 2 embeddings before personalising")
        indices = self.selector.select()
        theta = self.request_theta(window.mean(axis=0), indices)
        scores = energy(
            personalised_logits(torch.from_numpy(window), torch.from_numpy(theta), self.num_classes)
        )
        assert self.hypernet is not None  # set by request_theta
        reference, offset = self._score_scale(scores, self.threshold_quantile)
        self.snapshot = ThetaSnapshot(
            theta=theta,
            indices=indices,
            score_reference=reference,
            hypernet=self.hypernet,
            refreshed_at=time.time(),
            reason=reason,
            energy_offset=offset,
            familiarity=self.familiarity,
        )
        self._refine_if_possible(at_refresh=True)
        self.stale = False
        self._due = None
        self.refreshes += 1
        if self.on_refresh is not None:
            self.on_refresh(self.snapshot)
        return theta

    def _score_scale(
        self, scores: torch.Tensor, quantile: float
    ) -> tuple[ScoreScale, float | None]:
        """(mean, std) of a window's Energy under a head, and that head's threshold offset."""
        offset = None
        if self.reference_energy is not None:
            offset = energy_offset(scores, self.reference_energy, quantile)
        return (float(scores.mean()), float(scores.std()) + 1e-6), offset

    def _refine_if_possible(self, at_refresh: bool = False) -> None:
        """Refine the cached Θ on the window once it holds enough clips (no network).

        At a refresh, ``refinement.min_window`` clips suffice; a Θ refreshed on a smaller
        window or restored from disk also waits for the ``min_window`` clips a refresh
        needs (a refinement on a run's first few clips is a noisy one)."""
        snapshot, settings, window = self.snapshot, self.refinement, self.selector.window
        if snapshot is None or settings is None or snapshot.refined is not None:
            return
        needed = settings.min_window if at_refresh else max(settings.min_window, self.min_window)
        if len(window) < needed:
            return
        head = refine_head(window, snapshot.theta, self.num_classes, settings)
        head, ratio = familiarity_gate(head, window, self.familiarity, self.familiar_ratio)
        # the head fits its window, so its own scores are optimistic: its offset takes a
        # higher quantile of them (or cross-fitted scores: RefinementSettings)
        scores = offset_scores(window, snapshot.theta, self.num_classes, settings, head)
        reference, offset = self._score_scale(torch.from_numpy(scores), settings.offset_quantile)
        refined = RefinedHead(head, reference, offset, len(window), familiarity=ratio)
        self.snapshot = replace(snapshot, refined=refined)

    def head_logits(self, z: np.ndarray) -> torch.Tensor:
        """Logits [N, C] of the head in use (refined, else the cached Θ); z is not observed."""
        if self.snapshot is None:
            raise RuntimeError("no per-device Θ yet: refresh() first")
        if self.snapshot.refined is not None:
            return self.snapshot.refined.head.logits(z)
        return personalised_logits(
            torch.from_numpy(np.asarray(z, dtype=np.float64)),
            torch.from_numpy(self.snapshot.theta),
            self.num_classes,
        )

    def refresh_reason(self) -> str | None:
        """Why the per-device Θ should be refreshed now (None: keep it)."""
        if self.snapshot is None:
            return "first personalisation"
        if self._due is not None:
            return self._due
        if self.max_age_s is not None and time.time() - self.snapshot.refreshed_at > self.max_age_s:
            return "age"
        return self.drift_reason()

    def drifted(self) -> bool:
        """The documented drift rule (selection overlap or Energy-score shift)."""
        return self.snapshot is None or self.drift_reason() is not None

    def drift_reason(self) -> str | None:
        """``"selection drift"``, ``"score drift"`` or None (see the module docstring)."""
        if self.snapshot is None:
            return None
        window = self.selector.window
        if len(window) < 2:
            return None
        if self.selector.method == "importance":
            current = self.selector.select()
            overlap = np.intersect1d(current, self.snapshot.indices).size / current.size
            if overlap < self.min_overlap:
                return "selection drift"
        logits = self.head_logits(window)
        refined = self.snapshot.refined
        mean, std = refined.score_reference if refined else self.snapshot.score_reference
        if abs(float(energy(logits).mean()) - mean) > self.score_shift * std:
            return "score drift"
        return None

    def logits(self, z: np.ndarray) -> torch.Tensor:
        """Personalised logits [N, C] for embeddings z [N, D] (also added to the window)."""
        z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        self.observe(z)
        if self.mode == "per_sample":
            fixed = self.selector.select() if self.selector.method == "importance" else None
            thetas = np.stack(
                [
                    self.request_theta(row, fixed if fixed is not None else self.selector.select())
                    for row in z
                ]
            )
            return personalised_logits(
                torch.from_numpy(z), torch.from_numpy(thetas), self.num_classes
            )
        self._refresh_if_due(len(z))
        assert self.snapshot is not None  # _refresh_if_due raised otherwise
        self._refine_if_possible()
        return self.head_logits(z)

    def _refresh_if_due(self, new_clips: int) -> None:
        """Refresh when the rules say so; offline, keep the cached Θ and retry later."""
        self._clips_since_attempt += new_clips
        if self.stale and self._clips_since_attempt < self.retry_every:
            return  # offline: do not hammer the network on every clip
        reason = self.refresh_reason()
        if reason is None:
            return
        if len(self.selector) < self.min_window:
            if self.snapshot is None:
                raise ValueError(
                    f"observe at least {self.min_window} embeddings before personalising"
                )
            return
        if self.stale:
            reason = f"{reason} (retry after the cloud was unreachable)"
        self._clips_since_attempt = 0
        try:
            self.refresh(reason)
        except ServerUnreachableError:
            if self.snapshot is None:
                raise
            self.stale = True  # offline: keep using the last Θ


#: the refresh reason of a Θ restored from disk
RESTORED = "restart (confirm the cached theta)"
