"""Which embeddings H reads: the frozen base model's, or the base model's after LeanTTA.

LeanTTA (:mod:`shared.models.leantta`) normalises the first conv blocks of each stream with
each clip's own statistics, blended with the source's: per clip, stateless, forward only —
so it costs the device no backprop and no state. Under a camera shift it moves the
embeddings back towards the ones the head was trained on, which helps H and the device's
refinement as much as the global head (``bench/embedding_adaptation.py``).

H is trained on the embeddings devices send, so both sides must use the same kind: the H
job embeds its training devices with its :class:`EmbeddingAdaptation`, H's state records it
(:func:`shared.hypernet.hypernet_state`), the device embeds with it when it personalises and
names it in every Personalize request (:attr:`EmbeddingAdaptation.key`); the cloud refuses a
request whose embeddings are not the kind H reads (INVALID_ARGUMENT). An H without the
record reads plain embeddings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:  # torch is imported where a model is built, not by the device's CLI
    from torch import nn

#: conv blocks per stream of the base model (shared.models.int8.N_BLOCKS; a test checks)
MAX_LAYERS = 3


class EmbeddingAdaptation(BaseModel):
    """How the device's base model is run before its embeddings reach H (validated)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["none", "leantta"] = "leantta"
    #: conv blocks per stream whose BatchNorm LeanTTA replaces
    layers: int = Field(3, ge=1, le=MAX_LAYERS)
    #: weight of the source statistics in the blend (0: the clip's own only)
    tau: float = Field(0.9, ge=0.0, le=1.0)
    #: LeanTTA's divergence-driven pull back to the source (0: none)
    lam: float = Field(0.9, ge=0.0, le=1.0)

    @property
    def key(self) -> str:
        """The wire form: ``none`` or ``leantta:<layers>:<tau>:<lam>``."""
        if self.mode == "none":
            return "none"
        return f"leantta:{self.layers}:{self.tau:g}:{self.lam:g}"

    def describe(self) -> str:
        if self.mode == "none":
            return "plain (no adaptation)"
        return f"LeanTTA ({self.layers} blocks per stream, τ {self.tau:g}, λ {self.lam:g})"

    @classmethod
    def from_key(cls, key: str) -> EmbeddingAdaptation:
        """Parse :attr:`key`; the empty string (older devices) means plain. ValueError on junk."""
        if key in ("", "none"):
            return PLAIN
        parts = key.split(":")
        if len(parts) != 4 or parts[0] != "leantta":
            raise ValueError(f"embedding kind is 'none' or 'leantta:<k>:<tau>:<lam>', got {key!r}")
        try:
            layers, tau, lam = int(parts[1]), float(parts[2]), float(parts[3])
            return cls(mode="leantta", layers=layers, tau=tau, lam=lam)
        except (ValueError, ValidationError) as error:
            raise ValueError(f"bad embedding kind {key!r}: {error}") from None


PLAIN = EmbeddingAdaptation(mode="none")
#: what the server's H job trains on and a personalising device runs: LeanTTA on all three
#: conv blocks, τ = 0.9, λ = 0.9 (LeanTTA's own defaults), chosen on the HyperNetwork's
#: validation split over plain embeddings and τ, λ = (0.5, 0), (0.2, 0)
#: (``bench/embedding_adaptation.py``; docs/personalization.md)
DEFAULT = EmbeddingAdaptation()


def adapted_names(layers: int) -> list[str]:
    """Float-model BatchNorm names of the first ``layers`` conv blocks of both streams."""
    from shared.models.int8 import N_BLOCKS, STREAMS, adapted_block_names

    if isinstance(layers, bool) or not isinstance(layers, int):
        raise TypeError(f"adapt_layers must be an int, got {type(layers).__name__}")
    if not 0 <= layers <= N_BLOCKS:
        raise ValueError(f"adapt_layers must lie in [0, {N_BLOCKS}], got {layers}")
    return [name for stream in STREAMS for name in adapted_block_names(stream, layers)]


def adapted_model(model: nn.Module, adaptation: EmbeddingAdaptation) -> nn.Module:
    """``model`` itself when plain, else a LeanTTA copy of it (``model`` is not modified)."""
    from shared.models.leantta import apply_leantta

    if adaptation.mode == "none":
        return model
    names = adapted_names(adaptation.layers)
    return apply_leantta(model, names=names, tau=adaptation.tau, lam=adaptation.lam)
