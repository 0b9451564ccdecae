"""The one shape every cloud-trained method has: config in, progress out, a result.

A method module in ``server/training/`` exposes a ``TRAINER`` object satisfying
:class:`MethodTrainer`. The registry and the job runner only ever talk to this
interface, so adding a method never touches the service code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from pydantic import BaseModel

#: ``progress(fraction_done in [0, 1], message)`` — called often; must be cheap.
ProgressFn = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """Default progress sink that ignores updates."""


@dataclass
class TrainResult:
    """What a trainer hands back.

    ``state`` holds only tensors and plain Python values (it is saved with
    ``torch.save``); ``metrics`` are JSON-serialisable numbers that end up in
    the registry and the evaluation report.
    """

    state: dict[str, Any]
    metrics: dict[str, Any]
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    #: a trainer with its own file format (the base model) sets the artifact bytes;
    #: otherwise the job runner saves ``state`` in the generic method format
    artifact: bytes | None = None


class MethodTrainer(Protocol):
    """A backpropagation-free (or baseline) learning method the cloud can train."""

    #: registry / CLI / REST name, e.g. ``"zil"``
    name: str
    #: pydantic model of the method's config; validation errors are the user's errors
    config_model: type[BaseModel]

    def train(self, config: BaseModel, progress: ProgressFn = no_progress) -> TrainResult:
        """Train from scratch and return the result."""
        ...

    def load(self, state: dict[str, Any]) -> torch.nn.Module | Any:
        """Rebuild an inference-ready object from ``TrainResult.state``."""
        ...
