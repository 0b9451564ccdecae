"""ClipSet: a batch of clips with their optical flow, labels and action names.

The one container every data source (digit-actions, .mp4 import, folder datasets,
corruptions) returns, so training and evaluation code handles them alike.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.data.tensors import validate_clip, validate_flow

#: "id" = in-distribution (labels are class indices); "near" / "far" = OOD (labels are -1).
KINDS: tuple[str, ...] = ("id", "near", "far")


@dataclass
class ClipSet:
    """A set of clips with their flow and labels.

    frames: uint8 [N, T, H, W, 3]; flow: float32 [N, T-1, 2, H, W]; labels: int64 [N]
    (class index for ID, -1 for OOD); actions: one name per clip; kind: "id", "near" or "far".
    """

    frames: np.ndarray
    flow: np.ndarray
    labels: np.ndarray
    actions: list[str] = field(default_factory=list)
    kind: str = "id"

    def __post_init__(self) -> None:
        validate_clip(self.frames)
        validate_flow(self.flow)
        if self.frames.ndim != 5 or self.flow.ndim != 5:
            raise ValueError("ClipSet needs batched frames [N,T,H,W,3] and flow [N,T-1,2,H,W]")
        n, t, h, w, _ = self.frames.shape
        if self.flow.shape != (n, t - 1, 2, h, w):
            raise ValueError(
                f"flow shape {tuple(self.flow.shape)} does not match frames "
                f"{tuple(self.frames.shape)}; expected {(n, t - 1, 2, h, w)}"
            )
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(self.labels.shape)}")
        self.actions = [str(a) for a in self.actions]
        if len(self.actions) != n:
            raise ValueError(f"need one action name per clip ({n}), got {len(self.actions)}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def subset(self, idx: Sequence[int] | np.ndarray) -> ClipSet:
        """The clips at integer positions (or boolean mask) ``idx``, as a new ClipSet."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        return ClipSet(
            self.frames[idx],
            self.flow[idx],
            self.labels[idx],
            [self.actions[i] for i in idx],
            self.kind,
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to an uncompressed .npz (flow does not compress well; loading stays fast)."""
        np.savez(
            path,
            frames=self.frames,
            flow=self.flow,
            labels=self.labels,
            actions=np.asarray(self.actions, dtype=np.str_),
            kind=np.asarray(self.kind),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClipSet:
        """Read a ClipSet written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ClipSet file at {path}")
        with np.load(path, allow_pickle=False) as data:
            return cls(
                data["frames"],
                data["flow"],
                data["labels"],
                data["actions"].tolist(),
                str(data["kind"]),
            )
