"""Baselines for test-time adaptation: no adaptation, test-time BN, and TENT.

These are what LeanTTA is compared against (ALGORITHMS.md "LeanTTA": baselines TENT and test-time
BN; benchmark batch sizes 64, 16 and 1).

- :func:`no_adaptation` — the source model in eval mode (running statistics).
- :func:`bn_adapt` — test-time BatchNorm (Schneider et al., NeurIPS 2020; Nado et al. 2020):
  every BatchNorm normalises with the statistics of the current test batch. At batch size 1 on a
  conv net the statistics come from one sample's spatial positions, which removes per-sample
  information the classifier relies on: accuracy collapses, as expected.
- :class:`Tent` — TENT (Wang et al., "Tent: Fully Test-Time Adaptation by Entropy
  Minimization", ICLR 2021): BatchNorm uses batch statistics and its affine parameters (only)
  are updated by Adam to minimise the mean prediction entropy, ``steps`` updates per batch. It
  needs backpropagation, so it is a baseline, not a device method.

Models may take several inputs (the two-stream model takes RGB and flow): the wrappers call
``model(*inputs)``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def _require_batchnorm(model: nn.Module) -> list[_BatchNorm]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch nn.Module, got {type(model).__name__}")
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not layers:
        raise ValueError("the model has no BatchNorm layer to adapt")
    return layers


def _use_batch_statistics(bn: _BatchNorm) -> None:
    """Make ``bn`` normalise with each batch's statistics, in eval mode too, and never store them.

    With no running buffers PyTorch's BatchNorm computes batch statistics regardless of
    ``training``, so the rest of the model (dropout, …) can stay in eval mode.
    """
    bn.track_running_stats = False
    bn.running_mean = None
    bn.running_var = None
    bn.num_batches_tracked = None


def no_adaptation(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` in eval mode with gradients off: the unadapted source model."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch nn.Module, got {type(model).__name__}")
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    return frozen


def bn_adapt(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` whose BatchNorm layers normalise with the current batch's statistics.

    Nothing is learnt and nothing carries over between batches; the rest of the model is in eval
    mode. BatchNorm1d on (N, C) inputs needs N > 1 (PyTorch raises otherwise).
    """
    _require_batchnorm(model)
    adapted = no_adaptation(model)
    for bn in _require_batchnorm(adapted):
        _use_batch_statistics(bn)
    return adapted


def prediction_entropy(logits: Tensor) -> Tensor:
    """Shannon entropy (nats) of softmax(logits) per sample: (N, C) -> (N,)."""
    log_probs = torch.log_softmax(logits, dim=1)
    return -(log_probs.exp() * log_probs).sum(dim=1)


class Tent:
    """TENT test-time adaptation around a copy of ``model``; call it like the model.

    Each call runs ``steps`` times: forward on the batch, mean prediction entropy, one Adam step
    on the BatchNorm affine parameters; it returns the logits of the last forward pass (computed
    before that pass's update, as in the paper's reference implementation). Adaptation is
    continual: parameters and Adam state carry over between calls until :meth:`reset`.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, steps: int = 1) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        layers = _require_batchnorm(model)
        if not any(bn.affine for bn in layers):
            raise ValueError("TENT updates BatchNorm affine parameters, but no BatchNorm is affine")
        self.model = no_adaptation(model)
        self.lr = lr
        self.steps = steps
        self.params: list[nn.Parameter] = []
        for bn in _require_batchnorm(self.model):
            _use_batch_statistics(bn)
            if bn.affine:
                bn.weight.requires_grad_(True)
                bn.bias.requires_grad_(True)
                self.params += [bn.weight, bn.bias]
        self._initial_state = copy.deepcopy(self.model.state_dict())
        self.optimizer = self._new_optimizer()

    def _new_optimizer(self) -> torch.optim.Adam:
        return torch.optim.Adam(self.params, lr=self.lr, betas=(0.9, 0.999))

    def reset(self) -> None:
        """Restore the source affine parameters and a fresh optimiser (episodic evaluation)."""
        self.model.load_state_dict(self._initial_state)
        self.optimizer = self._new_optimizer()

    def __call__(self, *inputs: Tensor) -> Tensor:
        """Adapt on the batch ``inputs`` (passed to ``model(*inputs)``) and return its logits."""
        if not inputs:
            raise TypeError("Tent needs at least one input tensor")
        logits = None
        for _ in range(self.steps):
            with torch.enable_grad():
                logits = self.model(*inputs)
                loss = prediction_entropy(logits).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            self.optimizer.step()
        return logits.detach()
