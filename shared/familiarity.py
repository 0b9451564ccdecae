"""How familiar a camera is to the HyperNetwork: the distance of its window mean from H's
training devices.

H is a regression from a device's window mean u to a head Θ, fitted on a few hundred
simulated devices. Where u lies among those devices, Θ is an interpolation H was trained
for and classifies about as well as a head fine-tuned with labels; where u lies away from
all of them, Θ is an extrapolation and the device's own label-free refinement knows more.
The measure is the distance from u to the nearest training device's window mean, in units
of the typical nearest-neighbour distance *among* the training devices (the median over
them, each one left out of its own search): a ratio of 1 means "as close to some training
device as a typical training device is to its nearest other one".

The reference is public, simulated data (the training devices' mean embeddings, no
user's data); the cloud ships it with Θ and the device measures its own window against it,
so nothing about the device's camera leaves the device (docs/personalization.md).
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np

#: a window mean at most this many typical training-neighbour distances from its nearest
#: training device counts as familiar (chosen on validation devices and on held-out
#: training families, ``bench/familiarity_gate.py``)
FAMILIAR_RATIO = 1.0
#: leading bytes of :meth:`FamiliarityReference.to_bytes`: magic, devices, dim, scale
_HEADER = struct.Struct("<4sIId")
_MAGIC = b"SDF1"


@dataclass(frozen=True)
class FamiliarityReference:
    """H's training devices' window means [M, D] and their typical neighbour distance."""

    means: np.ndarray  # [M, D] float32
    scale: float  # median distance of a training device to its nearest other one

    def __post_init__(self) -> None:
        means = np.asarray(self.means)
        if means.ndim != 2 or len(means) < 2 or means.shape[1] < 1:
            raise ValueError(f"means must be [M >= 2, D], got shape {list(means.shape)}")
        if not np.isfinite(means).all():
            raise ValueError("means must be finite (no NaN or inf)")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number, got {self.scale!r}")

    @property
    def embed_dim(self) -> int:
        return int(self.means.shape[1])

    def ratio(self, window_mean: np.ndarray) -> float:
        """Distance of ``window_mean`` [D] to the nearest training device, over ``scale``."""
        u = np.asarray(window_mean, dtype=np.float64)
        if u.shape != (self.embed_dim,):
            raise ValueError(f"window mean must be [{self.embed_dim}], got {list(u.shape)}")
        if not np.isfinite(u).all():
            raise ValueError("window mean must be finite (no NaN or inf)")
        nearest = np.linalg.norm(self.means.astype(np.float64) - u, axis=1).min()
        return float(nearest / self.scale)

    def familiar(self, window_mean: np.ndarray, threshold: float = FAMILIAR_RATIO) -> bool:
        return self.ratio(window_mean) <= threshold

    def to_bytes(self) -> bytes:
        """Header (magic, M, D, scale) and the means as little-endian float32."""
        return self._serialized

    @cached_property
    def _serialized(self) -> bytes:
        means = np.ascontiguousarray(self.means, dtype="<f4")
        return _HEADER.pack(_MAGIC, *means.shape, float(self.scale)) + means.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> FamiliarityReference:
        """Parse :meth:`to_bytes`; ValueError on anything truncated, padded or foreign."""
        if len(data) < _HEADER.size:
            raise ValueError("familiarity reference is truncated (no header)")
        magic, devices, dim, scale = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("not a familiarity reference (bad magic)")
        if len(data) != _HEADER.size + 4 * devices * dim:
            raise ValueError(
                f"familiarity reference holds {len(data) - _HEADER.size} bytes of means, "
                f"expected {4 * devices * dim} for {devices} × {dim}"
            )
        means = np.frombuffer(data, dtype="<f4", offset=_HEADER.size).reshape(devices, dim)
        return cls(means.astype(np.float32), scale)

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()


def reference_after_reply(
    held: FamiliarityReference | None, sha256: str, data: bytes, embed_dim: int
) -> FamiliarityReference | None:
    """The reference a device holds after a Personalize reply naming ``sha256`` (with its
    bytes ``data``, or without them when the device already held it; "" for an H without).

    A damaged reference is dropped with a warning: Θ is still good, and without a reference
    the device's refined head classifies (the behaviour before the familiarity gate)."""
    if not data:
        return held if held is not None and sha256 == held.sha256 else None
    try:
        reference = FamiliarityReference.from_bytes(data)
        if reference.sha256 != sha256:
            raise ValueError("it does not match its sha256")
        if reference.embed_dim != embed_dim:
            raise ValueError(f"it has {reference.embed_dim} dims, not {embed_dim}")
    except ValueError as error:
        warnings.warn(f"ignoring the cloud's familiarity reference: {error}", stacklevel=2)
        return None
    return reference


def familiarity_reference(device_means: np.ndarray) -> FamiliarityReference:
    """The reference of training devices with window means ``device_means`` [M, D]."""
    means = np.asarray(device_means, dtype=np.float64)
    if means.ndim != 2 or len(means) < 2:
        raise ValueError(f"need the means of at least 2 devices [M, D], got {list(means.shape)}")
    squared = (means**2).sum(1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None] - 2 * means @ means.T, 0.0))
    np.fill_diagonal(distances, np.inf)
    return FamiliarityReference(means.astype(np.float32), float(np.median(distances.min(1))))
