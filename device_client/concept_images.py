"""A concept's images in, a grid of generated digits out (PNG, through OpenCV).

Input: a folder of 8-bit grayscale PNG files, each 16x16 (the diffusion model's resolution),
white digit on black like scikit-learn's digits. Anything else is refused with a message that
says what was found and what is expected — an empty or missing folder, no PNG files, a colour
or 16-bit image, another size — rather than silently converted: a resized or recoloured
concept would teach the token something the user did not show.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from shared.diffusion import IMAGE_SIZE

IMAGE_SUFFIXES = (".png",)


class ConceptImageError(ValueError):
    """The concept folder or one of its images cannot be used (message says why)."""


def _describe(image: np.ndarray) -> str:
    channels = 1 if image.ndim == 2 else image.shape[2]
    kind = {1: "grayscale", 2: "grayscale+alpha", 3: "colour", 4: "colour+alpha"}.get(channels)
    return f"{image.shape[1]}x{image.shape[0]} {kind} {image.dtype}"


def read_concept_image(path: Path) -> Tensor:
    """One 16x16 8-bit grayscale PNG -> ``[1, 16, 16]`` float32 in [-1, 1]."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ConceptImageError(f"{path}: not a readable PNG image")
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ConceptImageError(
            f"{path}: is {_describe(image)}; expected 8-bit grayscale (mode L) "
            f"{IMAGE_SIZE}x{IMAGE_SIZE}"
        )
    if image.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ConceptImageError(
            f"{path}: is {image.shape[1]}x{image.shape[0]}; expected {IMAGE_SIZE}x{IMAGE_SIZE}"
        )
    return torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0)[None]


def load_concept_images(folder: str | Path, min_images: int = 1) -> Tensor:
    """All PNGs of ``folder`` (sorted by name) -> ``[N, 1, 16, 16]`` in [-1, 1]."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConceptImageError(f"image folder not found: {folder}")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if not entries:
        raise ConceptImageError(f"image folder {folder} is empty; put the concept's PNGs there")
    paths = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        names = ", ".join(p.name for p in entries[:5])
        raise ConceptImageError(
            f"no PNG images in {folder} (found: {names}{', …' if len(entries) > 5 else ''})"
        )
    if len(paths) < min_images:
        raise ConceptImageError(f"{folder} has {len(paths)} PNG images; need at least {min_images}")
    return torch.stack([read_concept_image(p) for p in paths])


def to_uint8(images: Tensor) -> np.ndarray:
    """``[N, 1, H, W]`` in [-1, 1] -> ``[N, H, W]`` uint8 (0 black .. 255 white)."""
    pixels = ((images.detach().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return pixels[:, 0].to(torch.uint8).numpy()


def write_concept_images(images: Tensor, folder: str | Path, prefix: str = "image") -> list[Path]:
    """Save ``[N, 1, 16, 16]`` images as 8-bit grayscale PNGs (the input format above)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(to_uint8(images)):
        path = folder / f"{prefix}_{index:03d}.png"
        if not cv2.imwrite(str(path), image):
            raise OSError(f"could not write {path}")
        paths.append(path)
    return paths


def image_grid(
    images: Tensor, columns: int | None = None, scale: int = 4, pad: int = 1
) -> np.ndarray:
    """Tile ``[N, 1, H, W]`` images into one uint8 grid (nearest-neighbour ``scale``d)."""
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"expected a non-empty [N, 1, H, W] batch, got {tuple(images.shape)}")
    tiles = to_uint8(images)
    n, h, w = tiles.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad), 64, dtype=np.uint8)
    for index, tile in enumerate(tiles):
        r, c = divmod(index, columns)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = tile
    return np.kron(grid, np.ones((scale, scale), dtype=np.uint8))


def write_grid(images: Tensor, path: str | Path, columns: int | None = None) -> Path:
    """Write :func:`image_grid` of ``images`` as a PNG at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image_grid(images, columns)):
        raise OSError(f"could not write {path}")
    return path
