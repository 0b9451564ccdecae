"""Detectors by name, so configs, the CLI and the REST API can pick one with a string."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.ood.ash import ASH
from shared.ood.base import Detector
from shared.ood.energy import Energy
from shared.ood.gen import GEN
from shared.ood.knn import KNN
from shared.ood.mahalanobis import Mahalanobis
from shared.ood.maxlogit import MaxLogit
from shared.ood.msp import MSP
from shared.ood.react import ReAct
from shared.ood.temp_scaling import TempScaling
from shared.ood.vim import ViM

#: name → factory; calling the factory with no arguments gives the paper defaults.
DETECTORS: dict[str, Callable[..., Detector]] = {
    "msp": MSP,
    "maxlogit": MaxLogit,
    "energy": Energy,
    "gen": GEN,
    "temp_scaling": TempScaling,
    "mahalanobis": Mahalanobis,
    "knn": KNN,
    "vim": ViM,
    "react": ReAct,
    "ash": ASH,
}


def make_detector(name: str, **kwargs: Any) -> Detector:
    """A new detector called ``name`` (see ``DETECTORS``), built with ``kwargs``."""
    if not isinstance(name, str):
        raise TypeError(f"detector name must be a str, got {type(name).__name__}")
    try:
        factory = DETECTORS[name]
    except KeyError:
        valid = ", ".join(sorted(DETECTORS))
        raise ValueError(f"unknown detector {name!r}; valid names: {valid}") from None
    return factory(**kwargs)
