"""User-supplied video datasets in a documented folder format, loaded into a ClipSet.

Layout (see docs/data.md)::

    root/
      train/<class_name>/<clip>.mp4          one video file per clip (.mp4 .avi .mov .mkv .webm)
      train/<class_name>/<clip>/0001.png     ... or one folder of frame images per clip
      val/  test/                            same layout, same class names (ID)
      near_ood/<source>/...  far_ood/<source>/...   OOD clips (label -1)
      splits/<split>.txt                     optional, MultiOOD style: "<relpath> <label>"

Class names are the sorted sub-folders of ``root/train`` (or of the split itself when there is
no train folder); label = index in that list. Each clip becomes ``n_frames`` frames sampled
evenly over its whole length, resized to ``size x size``; flow comes from compute_flow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from shared.data.clipset import ClipSet
from shared.data.flow import compute_flow_batch
from shared.data.video_io import VideoError, iter_frames, resize_frames

FOLDER_SPLITS: tuple[str, ...] = ("train", "val", "test", "near_ood", "far_ood")
_SPLIT_ALIASES = {"near": "near_ood", "far": "far_ood"}
_KIND_OF_SPLIT = {"near_ood": "near", "far_ood": "far"}
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class FolderSplit(NamedTuple):
    """One loaded split: its clips and the ID class names (label k = class_names[k])."""

    clips: ClipSet
    class_names: tuple[str, ...]


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_clip(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in VIDEO_SUFFIXES
    return path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())


def _read_frames_resized(path: Path, size: int) -> np.ndarray:
    """All frames of a video file or frame folder, resized to size: uint8 [F, size, size, 3]."""
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        frames = []
        for image_path in images:
            image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
            if image is None:
                raise VideoError(f"cannot decode image {image_path}")
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            frames.append(resize_frames(rgb[None], size)[0])
        if not frames:
            raise VideoError(f"frame folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return np.stack(frames)
    return np.stack([resize_frames(f[None], size)[0] for f in iter_frames(path)])


def load_clip_file(path: str | os.PathLike[str], n_frames: int = 8, size: int = 32) -> np.ndarray:
    """One clip from a video file or frame folder: ``n_frames`` frames evenly spaced over its
    whole length, uint8 [n_frames, size, size, 3]."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"clip not found: {path}")
    frames = _read_frames_resized(path, size)
    if len(frames) < n_frames:
        raise VideoError(f"{path} has {len(frames)} frames; at least {n_frames} are needed")
    picks = np.linspace(0, len(frames) - 1, n_frames).round().astype(int)
    return frames[picks]


def _class_names(root: Path, split_dir: Path) -> tuple[str, ...]:
    train_dir = root / "train"
    return tuple(_subfolders(train_dir if train_dir.is_dir() else split_dir))


def _entries_from_split_file(root: Path, split_file: Path) -> list[tuple[Path, int, str]]:
    """(clip path, label, class folder) per line of a MultiOOD-style ``<relpath> <label>`` file."""
    entries = []
    for number, line in enumerate(split_file.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        relpath, _, label = line.strip().rpartition(" ")
        try:
            label_value = int(label)
        except ValueError:
            raise ValueError(
                f"{split_file}:{number}: expected '<relpath> <integer label>', got {line!r}"
            ) from None
        if not relpath:
            raise ValueError(f"{split_file}:{number}: missing clip path in {line!r}")
        clip = root / relpath.strip()
        entries.append((clip, label_value, clip.parent.name))
    return entries


def load_folder_dataset(
    root: str | os.PathLike[str], split: str, n_frames: int = 8, size: int = 32
) -> FolderSplit:
    """Load ``split`` ("train", "val", "test", "near_ood"/"near", "far_ood"/"far") of a
    folder dataset. Returns ``FolderSplit(clips, class_names)``; OOD clips have label -1."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found (or not a folder): {root}")
    split = _SPLIT_ALIASES.get(split, split)
    if split not in FOLDER_SPLITS:
        raise ValueError(
            f"unknown split {split!r}; valid splits: {', '.join(FOLDER_SPLITS)} (or near, far)"
        )
    kind = _KIND_OF_SPLIT.get(split, "id")
    split_dir, split_file = root / split, root / "splits" / f"{split}.txt"

    if split_file.is_file():
        entries = _entries_from_split_file(root, split_file)
        labelled = {label: folder for _, label, folder in entries if label >= 0}
        if (root / "train").is_dir():
            class_names = _class_names(root, split_dir)
        else:  # name each label after the folder of its clips
            n_classes = max(labelled, default=-1) + 1
            class_names = tuple(labelled.get(k, f"class_{k}") for k in range(n_classes))
        if kind != "id":
            entries = [(path, -1, folder) for path, _, folder in entries]
    elif split_dir.is_dir():
        class_names = _class_names(root, split_dir)
        entries = []
        for folder in _subfolders(split_dir):
            if kind == "id" and folder not in class_names:
                raise ValueError(
                    f"{split_dir / folder} is not a class of {root / 'train'}: "
                    f"expected one of {', '.join(class_names)}"
                )
            label = class_names.index(folder) if kind == "id" else -1
            for clip in sorted((split_dir / folder).iterdir()):
                if _is_clip(clip):
                    entries.append((clip, label, folder))
    else:
        present = ", ".join(_subfolders(root)) or "nothing"
        raise FileNotFoundError(
            f"split {split!r} not found: neither {split_dir} nor {split_file} exists "
            f"(root holds: {present})"
        )
    if not entries:
        raise ValueError(f"no clips found for split {split!r} under {root}")

    frames = np.stack([load_clip_file(path, n_frames, size) for path, _, _ in entries])
    labels = np.array([label for _, label, _ in entries], dtype=np.int64)
    actions = [folder for _, _, folder in entries]
    clips = ClipSet(frames, compute_flow_batch(frames), labels, actions, kind)
    return FolderSplit(clips, class_names)
