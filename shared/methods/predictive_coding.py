"""Inference side of the predictive-coding MLP (Song et al., NeurIPS 2020).

"Can the Brain Do Backpropagation? — Exact Implementation of Backpropagation in
Predictive Coding Networks" (Song, Lukasiewicz, Xu, Bogacz).

The network follows the paper's convention: the nonlinearity is applied to a
node *before* its outgoing weights, so with input ``a_0 = x`` and weights
``W_k`` of shape ``[n_{k+1}, n_k]`` (forward order, no bias)::

    a_{k+1} = f(a_k) @ W_k.T            output = a_K (linear, no f on it)

Once trained (by IL, Z-IL, Fa-Z-IL or backprop — see ``server/training``) it is a
plain feed-forward net; this module only runs it, so the device can import it
without any training code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

Activation = Literal["sigmoid", "tanh"]


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The node nonlinearity ``f``."""
    if name == "sigmoid":
        return torch.sigmoid
    if name == "tanh":
        return torch.tanh
    raise ValueError(f"unknown activation {name!r}; expected 'sigmoid' or 'tanh'")


def activation_derivative(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f'`` written in closed form (the PC inference rule needs it explicitly)."""
    if name == "sigmoid":

        def sigmoid_prime(x: torch.Tensor) -> torch.Tensor:
            s = torch.sigmoid(x)
            return s * (1 - s)

        return sigmoid_prime
    if name == "tanh":
        return lambda x: 1 - torch.tanh(x) ** 2
    raise ValueError(f"unknown activation {name!r}; expected 'sigmoid' or 'tanh'")


def feedforward_nodes(
    weights: list[torch.Tensor], x: torch.Tensor, activation: str
) -> list[torch.Tensor]:
    """All node values ``[a_0 = x, a_1, ..., a_K]`` of one forward sweep, each ``[B, n_k]``."""
    f = activation_fn(activation)
    nodes = [x]
    for weight in weights:
        nodes.append(f(nodes[-1]) @ weight.T)
    return nodes


class PredictiveCodingMLP:
    """A trained predictive-coding MLP, run as an ordinary feed-forward net.

    ``weights[k]`` has shape ``[n_{k+1}, n_k]``; inputs are ``[B, n_0]``,
    outputs ``[B, n_K]`` (regression targets, e.g. one-hot class codes).
    """

    def __init__(self, weights: list[torch.Tensor], activation: str) -> None:
        activation_fn(activation)  # validate the name early
        if not weights:
            raise ValueError("a PredictiveCodingMLP needs at least one weight matrix")
        for k in range(1, len(weights)):
            if weights[k].shape[1] != weights[k - 1].shape[0]:
                raise ValueError(
                    f"weights[{k}] has {weights[k].shape[1]} inputs but weights[{k - 1}] "
                    f"produces {weights[k - 1].shape[0]} outputs"
                )
        self.weights = [w.detach().clone() for w in weights]
        self.activation = activation

    @property
    def layer_sizes(self) -> list[int]:
        """``[n_0, ..., n_K]`` (input first)."""
        return [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]

    def forward(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Network output ``[B, n_K]`` for inputs ``[B, n_0]`` (tensor or array)."""
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.layer_sizes[0]:
            raise ValueError(
                f"expected inputs of shape [batch, {self.layer_sizes[0]}], got {tuple(x.shape)}"
            )
        x = x.to(self.weights[0].dtype)
        return feedforward_nodes(self.weights, x, self.activation)[-1]

    __call__ = forward

    def predict(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Class index ``[B]`` (argmax of the output), like every hub method's predictor."""
        return self.forward(x).argmax(dim=1).numpy()

    def state_dict(self) -> dict[str, Any]:
        """torch.save-able state that :meth:`from_state` rebuilds."""
        return {"weights": [w.clone() for w in self.weights], "activation": self.activation}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PredictiveCodingMLP:
        """Rebuild from :meth:`state_dict` output."""
        missing = {"weights", "activation"} - set(state)
        if missing:
            raise ValueError(f"predictive-coding state lacks keys {sorted(missing)}")
        return cls(list(state["weights"]), str(state["activation"]))
