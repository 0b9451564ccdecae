"""The concept folder: what is accepted, what is refused and how; the PNG grid."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from device_client.concept_images import (
    ConceptImageError,
    image_grid,
    load_concept_images,
    write_concept_images,
    write_grid,
)
from shared.diffusion.data import concept_images


def test_written_concept_images_load_back_within_one_grey_level(tmp_path):
    images = concept_images(5)
    write_concept_images(images, tmp_path / "seven")
    loaded = load_concept_images(tmp_path / "seven")
    assert loaded.shape == (5, 1, 16, 16)
    assert (loaded - images).abs().max() <= 1 / 127.5 + 1e-6


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "empty"),
        (lambda d: (d / "notes.txt").write_text("hi"), "no PNG images"),
        (lambda d: cv2.imwrite(str(d / "a.png"), np.zeros((16, 16, 3), np.uint8)), "colour"),
        (lambda d: cv2.imwrite(str(d / "a.png"), np.zeros((16, 16), np.uint16)), "uint16"),
        (lambda d: cv2.imwrite(str(d / "a.png"), np.zeros((32, 32), np.uint8)), "32x32"),
        (lambda d: (d / "a.png").write_bytes(b"not a png"), "not a readable PNG"),
    ],
)
def test_bad_folders_and_images_are_refused_with_the_reason(tmp_path, make, message):
    folder = tmp_path / "concept"
    folder.mkdir()
    make(folder)
    with pytest.raises(ConceptImageError, match=message):
        load_concept_images(folder)


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ConceptImageError, match="not found"):
        load_concept_images(tmp_path / "nowhere")


def test_grid_tiles_every_image(tmp_path):
    images = torch.stack([torch.full((1, 16, 16), v) for v in (-1.0, 1.0, 0.0)])
    grid = image_grid(images, columns=2, scale=1, pad=1)
    assert grid.shape == (2 * 17 + 1, 2 * 17 + 1)
    assert grid[1:17, 1:17].max() == 0 and grid[1:17, 18:34].min() == 255
    path = write_grid(images, tmp_path / "out" / "grid.png", columns=2)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape == (4 * 35, 4 * 35)
