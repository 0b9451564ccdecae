"""The device half of SecDOOD personalisation: select → encrypt → Personalize → decrypt → logits.

:class:`Personalizer` turns the device's embeddings into personalised logits
with the cloud's HyperNetwork, never sending a channel it did not select and
never sending anything unencrypted unless ``encrypted=False`` (trusted network,
benchmarks — same code path, plain numbers instead of ciphertexts).

Modes:

- ``"per_sample"`` (as in the paper): one round trip per embedding; Θ = H(z ⊙ mask).
- ``"per_device"``: one round trip per *refresh*; Θ = H(mean of the window ⊙ mask)
  (H is affine, so this is the mean of the per-sample Θs), cached, and used for
  every clip locally — inference then works offline.

Drift rule for refreshing the per-device Θ (checked on every :meth:`logits` call
once the window is full): refresh when (a) the importance-ranked selection has
changed — fewer than ``min_overlap`` (default ½) of the cached channels are still
in the current top-α set — or (b) the score distribution has moved — the mean
Energy score (−logsumexp of the personalised logits) of the current window
differs from its value at the last refresh by more than ``score_shift`` (default
3) standard deviations of the scores then. When the cloud is unreachable the
cached Θ stays in use and :attr:`stale` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import tenseal as ts
import torch

from device_client.channel_selection import DEFAULT_WINDOW, ChannelSelector, SelectionMethod
from device_client.gateway_client import PersonalizeReply, ServerUnreachableError
from shared.channel_importance import DEFAULT_ALPHA
from shared.he import decrypt_theta, encrypt_selected
from shared.hypernet import personalised_logits

PersonalizeMode = Literal["per_sample", "per_device"]


class PersonalizeTransport(Protocol):
    """What carries a request to the cloud; :class:`GatewayClient` is one."""

    def personalize(
        self,
        alpha: float,
        indices: list[int],
        encrypted: bytes | None = None,
        plain: list[float] | None = None,
    ) -> PersonalizeReply: ...


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
    ) -> None:
        if mode not in ("per_sample", "per_device"):
            raise ValueError(f"mode must be 'per_sample' or 'per_device', got {mode!r}")
        if context is not None and not context.is_private():
            raise ValueError("encrypted mode needs the device's private context (secret key)")
        if not 0.0 <= min_overlap <= 1.0 or score_shift <= 0:
            raise ValueError("min_overlap must be in [0, 1] and score_shift > 0")
        self.transport = transport
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.context = context
        self.mode: PersonalizeMode = mode
        self.selector = ChannelSelector(embed_dim, alpha, selection, window, seed)
        self.min_overlap = min_overlap
        self.score_shift = score_shift
        self.stats = WireStats()
        self.stale = False
        self.refreshes = 0
        self._theta: np.ndarray | None = None
        self._theta_indices: np.ndarray | None = None
        self._score_reference: tuple[float, float] | None = None

    @property
    def encrypted(self) -> bool:
        return self.context is not None

    @property
    def theta_size(self) -> int:
        return self.embed_dim * self.num_classes + self.num_classes

    @property
    def theta(self) -> np.ndarray | None:
        """The cached per-device Θ [D·C + C] (None before the first refresh)."""
        return self._theta

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
        if self.context is not None:
            ciphertext = encrypt_selected(self.context, z, np.asarray(indices))
            reply = self.transport.personalize(alpha, index_list, encrypted=ciphertext)
            theta = decrypt_theta(self.context, reply.theta_ciphertexts, self.theta_size)
        else:
            reply = self.transport.personalize(alpha, index_list, plain=z[indices].tolist())
            theta = np.asarray(reply.theta_plain, dtype=np.float64)
            if theta.shape != (self.theta_size,):
                raise ValueError(f"cloud sent {theta.size} values, expected {self.theta_size}")
        self.stats.requests += 1
        self.stats.bytes_up += reply.bytes_up
        self.stats.bytes_down += reply.bytes_down
        self.stats.he_seconds += reply.he_seconds
        return theta

    def refresh(self) -> np.ndarray:
        """Per-device Θ from the window mean; cached with its selection and score reference."""
        window = self.selector.window
        if len(window) < 2:
            raise ValueError("observe at least 2 embeddings before personalising")
        indices = self.selector.select()
        theta = self.request_theta(window.mean(axis=0), indices)
        self._theta, self._theta_indices = theta, indices
        scores = _energy(
            personalised_logits(torch.from_numpy(window), torch.from_numpy(theta), self.num_classes)
        )
        self._score_reference = (float(scores.mean()), float(scores.std()) + 1e-6)
        self.stale = False
        self.refreshes += 1
        return theta

    def drifted(self) -> bool:
        """The documented drift rule (selection overlap or Energy-score shift)."""
        if self._theta is None or self._theta_indices is None or self._score_reference is None:
            return True
        window = self.selector.window
        if len(window) < 2:
            return False
        current = self.selector.select() if self.selector.method == "importance" else None
        if current is not None:
            overlap = np.intersect1d(current, self._theta_indices).size / current.size
            if overlap < self.min_overlap:
                return True
        logits = personalised_logits(
            torch.from_numpy(window), torch.from_numpy(self._theta), self.num_classes
        )
        mean, std = self._score_reference
        return abs(float(_energy(logits).mean()) - mean) > self.score_shift * std

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
        if self.drifted():
            try:
                self.refresh()
            except ServerUnreachableError:
                if self._theta is None:
                    raise
                self.stale = True  # offline: keep using the last Θ
        assert self._theta is not None
        return personalised_logits(
            torch.from_numpy(z), torch.from_numpy(self._theta), self.num_classes
        )


def _energy(logits: torch.Tensor) -> torch.Tensor:
    """Energy OOD score −logsumexp(logits) [N]; higher = more OOD."""
    return -torch.logsumexp(logits, dim=1)
