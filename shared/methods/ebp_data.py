"""Loader for the binary text tasks of the Expectation Backpropagation paper.

The files (MATLAB v5, one per task) live outside the repository, in
``../shared/data/ebp`` next to the checkout, or wherever ``SECDOOD_EBP_DATA``
points. What they hold, measured on the shipped copies:

- ``20News_comp``, ``reuters_*``: ``data`` is a *dense* float64 matrix whose
  columns are already standardised (almost no zeros, so sparse storage would
  not help); it is returned as a dense float32 ``ndarray`` (20News: 228 MB).
- ``apparel_books``, ``apparel_dvd``: ``data`` is stored *sparse* in the file
  (raw word counts, ~0.07 % non-zero); it is returned as float32 CSR, because
  dense it would take 3.7 GB.

``scipy.io.loadmat`` reads each file in under 2 s with < 0.6 GB peak RSS, so no
cache is kept. Every feature is kept (no feature selection).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse

#: the five tasks shipped in ../shared/data/ebp (the paper had three more)
EBP_TASKS: tuple[str, ...] = (
    "20News_comp",
    "apparel_books",
    "apparel_dvd",
    "reuters_I654_I65",
    "reuters_I81_I83",
)

#: feature matrix type: dense ``[T, M]`` float32, or CSR ``[T, M]`` float32
EBPFeatures = np.ndarray | scipy.sparse.csr_matrix


def default_data_dir() -> Path:
    """``$SECDOOD_EBP_DATA`` if set, else ``<repo>/../shared/data/ebp``."""
    env = os.environ.get("SECDOOD_EBP_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ebp"


def load_ebp_task(name: str, data_dir: str | Path | None = None) -> tuple[EBPFeatures, np.ndarray]:
    """Load one task: ``X`` ``[T, M]`` float32 (dense or CSR, see module doc), ``y`` ``[T]`` ±1.

    Raises ValueError for an unknown task or a malformed file and
    FileNotFoundError when the file is not where it should be.
    """
    if name not in EBP_TASKS:
        raise ValueError(f"unknown EBP task {name!r}; expected one of {', '.join(EBP_TASKS)}")
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    path = folder / f"{name}.mat"
    if not path.is_file():
        raise FileNotFoundError(
            f"EBP task file {path} not found; point SECDOOD_EBP_DATA (or data_dir) at the "
            "folder holding the .mat files"
        )
    contents = scipy.io.loadmat(path)
    missing = {"data", "labels"} - set(contents)
    if missing:
        raise ValueError(f"{path} lacks variables {sorted(missing)}; expected 'data' and 'labels'")
    data, labels = contents["data"], np.asarray(contents["labels"])
    if data.ndim != 2:
        raise ValueError(
            f"{path}: 'data' must be a 2-D [samples, features] matrix, got {data.shape}"
        )
    if labels.size != data.shape[0] or (labels.ndim == 2 and 1 not in labels.shape):
        raise ValueError(
            f"{path}: 'labels' must be one column of {data.shape[0]} entries, got {labels.shape}"
        )
    y = labels.reshape(-1).astype(np.int64)
    if not np.isin(y, (-1, 1)).all():
        raise ValueError(f"{path}: labels must be ±1, found values {np.unique(y)[:10]}")
    if "M" in contents and int(np.asarray(contents["M"]).item()) != data.shape[1]:
        raise ValueError(f"{path}: M = {contents['M']} disagrees with {data.shape[1]} columns")
    if scipy.sparse.issparse(data):
        features: EBPFeatures = scipy.sparse.csr_matrix(data, dtype=np.float32)
    else:
        features = np.ascontiguousarray(data, dtype=np.float32)
    return features, y
