"""Digits at 16x16 for the diffusion model, and the held-out "new concept" class.

scikit-learn's bundled 8x8 digits (pixel values 0..16) upscaled bilinearly to 16x16 and mapped
to [-1, 1] (the DDPM convention). One class is held out of denoiser training; a few of its images
are the concept a device personalises to. Fixed stratified split (seed 0): ``train`` for the
denoiser and the evaluation classifier, ``concept`` = the first images of the held-out class in
``train`` order (never shown to the denoiser), ``test`` for the classifier's own accuracy.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from shared.diffusion import IMAGE_SIZE, NUM_CLASSES

#: default held-out concept (any digit works; 7 is distinct from the others in shape)
HELD_OUT_CLASS = 7


class DigitImages(NamedTuple):
    """Images ``[N, 1, 16, 16]`` float32 in [-1, 1] and labels ``[N]`` int64."""

    images: torch.Tensor
    labels: torch.Tensor


def upscale(images8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """8x8 digits, values 0..16 (``[N, 64]`` or ``[N, 8, 8]``) -> ``[N, 1, 16, 16]`` in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images8), dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = torch.nn.functional.interpolate(x, size=IMAGE_SIZE, mode="bilinear", align_corners=False)
    return (x.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model space -> [0, 1] pixels (clamped), same shape."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def digit_splits(test_size: float = 0.25, seed: int = 0) -> tuple[DigitImages, DigitImages]:
    """All ten classes, stratified (train, test) split of the 1797 digits at 16x16."""
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=test_size, stratify=digits.target, random_state=seed
    )
    return (
        DigitImages(upscale(x_train), torch.as_tensor(y_train, dtype=torch.long)),
        DigitImages(upscale(x_test), torch.as_tensor(y_test, dtype=torch.long)),
    )


def check_class(held_out: int) -> int:
    if isinstance(held_out, bool) or not isinstance(held_out, int):
        raise TypeError(f"held-out class must be an int, got {type(held_out).__name__}")
    if not 0 <= held_out < NUM_CLASSES:
        raise ValueError(f"held-out class must lie in [0, {NUM_CLASSES - 1}], got {held_out}")
    return held_out


def denoiser_training_set(held_out: int = HELD_OUT_CLASS) -> DigitImages:
    """The train split without the held-out class (what the denoiser learns from)."""
    train, _ = digit_splits()
    keep = train.labels != check_class(held_out)
    return DigitImages(train.images[keep], train.labels[keep])


def concept_images(n: int = 5, held_out: int = HELD_OUT_CLASS, offset: int = 0) -> torch.Tensor:
    """``n`` images of the held-out class from the train split (``[n, 1, 16, 16]``, [-1, 1]).

    ``offset`` picks a different group of ``n`` (for repeated personalisation runs).
    """
    train, _ = digit_splits()
    images = train.images[train.labels == check_class(held_out)]
    if n < 1 or offset < 0 or (offset + 1) * n > len(images):
        raise ValueError(
            f"need n >= 1, offset >= 0 and (offset + 1) * n <= {len(images)}; got n={n}, "
            f"offset={offset}"
        )
    return images[offset * n : offset * n + n].clone()
