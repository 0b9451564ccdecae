"""Inference side of Expectation Backpropagation with binary weights.

Soudry, Hubara, Meir, "Expectation Backpropagation: Parameter-Free Training of
Multilayer Neural Networks with Continuous or Discrete Weights", NeurIPS 2014.

Each binary weight ``w ∈ {±1}`` has a mean-field posterior with field ``h``:
``P(w = +1) = (1 + tanh h)/2``, mean ``m = tanh(h)``. Neurons are sign units;
biases are real (as in the authors' code). A layer with K inputs computes,
under the central-limit (Gaussian) approximation of its pre-activation::

    μ_u  = (Σ_j m_j μ_vj + b) / √(K+1)
    σ²_u = (Σ_j Var(v_j) + Σ_j (1 − m_j²) μ_vj² + 1) / (K+1)
    p = Φ(μ_u/σ_u),  μ_v = 2p − 1,  Var(v) = 4p(1 − p)

Inputs are deterministic (Var = 0). The ``+1`` is the authors' choice; it acts
as unit-variance Gaussian noise on each neuron's input. Two read-outs:

- **EBP-P** (probabilistic): the sign of the mean-field output ``μ_u``;
- **EBP-D** (deterministic): a plain binary network with weights ``sign(h)``,
  sign hidden units and real biases — what a device would run.

Inputs may be dense or scipy-sparse; for sparse batches only the columns that
are non-zero in the batch are touched, which is exact (zero inputs contribute
nothing) and makes 240k-feature tasks cheap.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import scipy.sparse
import torch

FeatureBatch = np.ndarray | scipy.sparse.spmatrix | torch.Tensor


def active_batch(x: FeatureBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dense float64 ``[B, A]`` of the batch's active columns and their indices (``None`` = all).

    Dense inputs keep every column; sparse inputs keep the columns with any
    non-zero entry in this batch.
    """
    if scipy.sparse.issparse(x):
        csr = scipy.sparse.csr_matrix(x)
        columns = np.unique(csr.indices)
        dense = csr[:, columns].toarray()
        return torch.from_numpy(dense).to(torch.float64), torch.from_numpy(columns).long()
    tensor = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if tensor.ndim != 2:
        raise ValueError(f"expected a [batch, features] matrix, got shape {tuple(tensor.shape)}")
    return tensor.to(torch.float64), None


def _gaussian_cdf(z: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtr(z)


class EBPNetwork:
    """Mean-field binary MLP: fields ``h[k]`` ``[n_{k+1}, n_k]``, real biases ``[n_{k+1}]``.

    The output layer has one unit; labels are ±1.
    """

    def __init__(self, fields: list[torch.Tensor], biases: list[torch.Tensor]) -> None:
        if not fields or len(fields) != len(biases):
            raise ValueError("need one bias vector per weight-field matrix (and at least one)")
        for k, (h, b) in enumerate(zip(fields, biases, strict=True)):
            if h.ndim != 2 or b.shape != (h.shape[0],):
                raise ValueError(
                    f"layer {k}: field {tuple(h.shape)} and bias {tuple(b.shape)} mismatch"
                )
            if k and h.shape[1] != fields[k - 1].shape[0]:
                raise ValueError(
                    f"layer {k} expects {h.shape[1]} inputs, layer {k - 1} gives "
                    f"{fields[k - 1].shape[0]}"
                )
        if fields[-1].shape[0] != 1:
            raise ValueError(f"the output layer must have one unit, got {fields[-1].shape[0]}")
        self.fields = [h.detach().to(torch.float64).clone() for h in fields]
        self.biases = [b.detach().to(torch.float64).clone() for b in biases]
        #: cached posterior means m = tanh(h); trainers keep it in sync with ``fields``
        self.means = [torch.tanh(h) for h in self.fields]

    @property
    def n_inputs(self) -> int:
        """Input dimension K of the first layer."""
        return self.fields[0].shape[1]

    def _check(self, x: torch.Tensor, columns: torch.Tensor | None) -> None:
        width = self.n_inputs if columns is None else len(columns)
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"expected inputs [batch, {self.n_inputs}], got {tuple(x.shape)}")

    def mean_field_forward(
        self, x: torch.Tensor, columns: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Gaussian-CLT forward pass.

        ``x`` is ``[B, A]`` float64 holding input columns ``columns`` (all when ``None``).
        Returns per layer ``μ_u`` and ``σ²_u`` (``[B, n_{k+1}]``) and the layer *inputs'*
        means ``μ_v`` (``[B, n_k]``; entry 0 is ``x`` itself).
        """
        self._check(x, columns)
        mean_us, var_us, mean_vs = [], [], [x]
        mean_v, var_v_sum = x, torch.zeros(x.shape[0], 1, dtype=x.dtype)
        for k, (m, b) in enumerate(zip(self.means, self.biases, strict=True)):
            if k == 0 and columns is not None:
                m = m[:, columns]
            scale = self.fields[k].shape[1] + 1  # K + 1, the full fan-in
            mean_u = (mean_v @ m.T + b) / math.sqrt(scale)
            var_u = (var_v_sum + mean_v**2 @ (1 - m**2).T + 1) / scale
            mean_us.append(mean_u)
            var_us.append(var_u)
            prob = _gaussian_cdf(mean_u / var_u.sqrt())
            mean_v = 2 * prob - 1
            var_v_sum = (4 * prob * (1 - prob)).sum(dim=1, keepdim=True)
            if k + 1 < len(self.means):
                mean_vs.append(mean_v)
        return mean_us, var_us, mean_vs

    def deterministic_output(
        self, x: torch.Tensor, columns: torch.Tensor | None = None
    ) -> torch.Tensor:
        """EBP-D pre-activation of the output ``[B]``: weights sign(h), sign hidden units."""
        self._check(x, columns)
        v = x
        for k, (h, b) in enumerate(zip(self.fields, self.biases, strict=True)):
            if k == 0 and columns is not None:
                h = h[:, columns]
            u = v @ torch.where(h >= 0, 1.0, -1.0).to(v.dtype).T + b
            v = torch.where(u >= 0, 1.0, -1.0).to(v.dtype)
        return u[:, 0]

    def predict(
        self,
        x: FeatureBatch,
        mode: Literal["probabilistic", "deterministic"] = "probabilistic",
        batch_size: int = 64,
    ) -> np.ndarray:
        """±1 predictions ``[T]`` for ``x`` ``[T, K]`` (dense, sparse or tensor), in chunks."""
        if mode not in ("probabilistic", "deterministic"):
            raise ValueError(f"mode must be 'probabilistic' or 'deterministic', got {mode!r}")
        if x.ndim != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(f"expected inputs [samples, {self.n_inputs}], got {tuple(x.shape)}")
        out = np.empty(x.shape[0], dtype=np.int64)
        for start in range(0, x.shape[0], batch_size):
            chunk, columns = active_batch(x[start : start + batch_size])
            if mode == "probabilistic":
                score = self.mean_field_forward(chunk, columns)[0][-1][:, 0]
            else:
                score = self.deterministic_output(chunk, columns)
            out[start : start + len(score)] = np.where(score.numpy() >= 0, 1, -1)
        return out

    def state_dict(self) -> dict[str, Any]:
        """torch.save-able state for :meth:`from_state`."""
        return {
            "fields": [h.clone() for h in self.fields],
            "biases": [b.clone() for b in self.biases],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EBPNetwork:
        """Rebuild from :meth:`state_dict` output."""
        missing = {"fields", "biases"} - set(state)
        if missing:
            raise ValueError(f"EBP state lacks keys {sorted(missing)}")
        return cls(list(state["fields"]), list(state["biases"]))
