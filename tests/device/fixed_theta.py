"""A stand-in gateway that answers with a chosen Θ, and toy embeddings for it.

Shared by the PersonalHead tests (guard, threshold): the real Personalizer, keyring and
head run; only the cloud is replaced (the real gRPC path is in test_personalize.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from device_client.gateway_client import PersonalizeReply
from device_client.head_guard import CONFIDENCE_SLACK, HeadGuard
from device_client.keyring import DeviceKeyring, PersonalizationSettings
from device_client.personal_head import PersonalHead
from device_client.state import DeviceState

#: embedding channels, classes, and the personalise window of the toy device
D, C, WINDOW = 6, 3, 8
#: the global head: class k reads channel k
WEIGHT, BIAS = torch.eye(C, D) * 4.0, torch.zeros(C)


class FixedTheta:
    """Answers every Personalize request with the same Θ (plaintext)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.theta = torch.cat([weight.T.reshape(-1), bias]).double().tolist()

    def personalize(
        self,
        alpha,
        indices,
        encrypted=None,
        plain=None,
        familiarity_sha256="",
        embedding_kind="none",
    ) -> PersonalizeReply:
        return PersonalizeReply([], self.theta, "hypernetwork", 3, "ab" * 32, D, C, 0.0, 1, 1)


def clips(n: int, seed: int) -> np.ndarray:
    """``n`` toy embeddings whose class k lights up channel k."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 0.1, (n, D))
    z[np.arange(n), np.arange(n) % C] += 1.0
    return z


def guarded_head(
    state_dir: Path,
    theta: FixedTheta | None,
    energy_threshold: float | None = None,
    **personalizer_options: Any,
) -> PersonalHead:
    """A PersonalHead with the device's guard over the toy global head.

    ``theta`` None: offline, scoring from the cached Θ only.
    """
    keyring = DeviceKeyring(DeviceState(state_dir))
    personalizer = keyring.personalizer(
        theta,
        "cloud:50051",
        "dev-1",
        D,
        C,
        model_key="m v1",
        settings=PersonalizationSettings(encrypted=False),
        window=WINDOW,
        min_window=WINDOW,
        **personalizer_options,
    )
    guard = HeadGuard(WEIGHT, BIAS, confidence_slack=CONFIDENCE_SLACK)
    return PersonalHead(personalizer, keyring, guard=guard, energy_threshold=energy_threshold)


def run_stream(head: PersonalHead, z: np.ndarray) -> list[torch.Tensor | None]:
    """Feed ``z`` to the head four clips at a time, as the run loop does."""
    return [head(torch.from_numpy(batch).float()) for batch in np.split(z, len(z) // 4)]
