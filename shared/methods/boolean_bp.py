"""Inference of a Boolean network: bit-packed XNOR–majority neurons.

Every weight and activation is one bit. A neuron with weight bits ``w`` over an
input ``a`` (the layer's inputs followed by ``bias_bits(n_in)`` constant ones)
is one composite gate::

    y = MAJ_i XNOR(w_i, a_i)       ⇔   2 · popcount(XNOR(w, a)) > n

with ``n = n_in + bias_bits(n_in)`` odd, so there is never a tie. The weights on
the constant ones act as a learnable threshold. Bits are packed little-endian
into ``uint64`` words; ``popcount(XNOR(w, a)) = n − popcount(w XOR a)`` (padding
bits are zero in both, so they never disagree).

A network with one output computes a Boolean function; with C outputs it
classifies by the output with the most agreements (popcount comparison).
"""

from __future__ import annotations

from typing import Any

import numpy as np

WORD_BITS = 64


def bias_bits(n_in: int) -> int:
    """Constant-one inputs appended to ``n_in`` inputs: about ``n_in / 2``, fan-in made odd."""
    half = n_in // 2
    return half + (1 if (n_in + half) % 2 == 0 else 0)


def check_binary(x: np.ndarray, name: str = "inputs") -> np.ndarray:
    """``x`` as a bool array; ValueError unless every entry is 0/1 (or bool)."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric 0/1 or bool, got dtype {arr.dtype}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        bad = np.unique(arr[~np.isin(arr, (0, 1))])[:5]
        raise ValueError(f"{name} must be binary (0/1) for a Boolean network; found {bad.tolist()}")
    return arr.astype(np.bool_)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Bool ``[..., n]`` → ``uint64`` ``[..., ceil(n / 64)]`` (little-endian bits, zero padding)."""
    packed = np.packbits(bits, axis=-1, bitorder="little")
    pad = (-packed.shape[-1]) % 8
    if pad:
        packed = np.concatenate(
            [packed, np.zeros((*packed.shape[:-1], pad), dtype=np.uint8)], axis=-1
        )
    return np.ascontiguousarray(packed).view(np.uint64)


def unpack_bits(words: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``uint64 [..., W]`` → bool ``[..., n]``."""
    as_bytes = np.ascontiguousarray(words).view(np.uint8)
    return np.unpackbits(as_bytes, axis=-1, count=n, bitorder="little").astype(np.bool_)


def with_bias(a: np.ndarray) -> np.ndarray:
    """Append the constant-one inputs to bool activations ``[S, n_in]``."""
    ones = np.ones((a.shape[0], bias_bits(a.shape[1])), dtype=np.bool_)
    return np.concatenate([a, ones], axis=1)


def disagreements_packed(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``popcount(a_s XOR w_j)`` for bool ``a [S, n]``, ``w [J, n]``: int ``[S, J]``, packed.

    One word column at a time (``n / 64`` outer XORs): numpy broadcasting over a
    short last axis is several times slower than these contiguous 2-D passes.
    """
    pa, pw = pack_bits(a), pack_bits(w)
    total = np.zeros((pa.shape[0], pw.shape[0]), dtype=np.int64)
    for k in range(pa.shape[1]):
        total += np.bitwise_count(np.bitwise_xor.outer(pa[:, k], pw[:, k]))
    return total


def disagreements_float(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Same numbers as :func:`disagreements_packed` by a float32 ±1 matrix product."""
    sa = a.astype(np.float32) * 2 - 1
    sw = w.astype(np.float32) * 2 - 1
    return np.rint((a.shape[1] - sa @ sw.T) / 2).astype(np.int64)


KERNELS = {"packed": disagreements_packed, "float": disagreements_float}


class BooleanNetwork:
    """Layers of XNOR–majority neurons; ``weights[k]`` is bool ``[n_out, n_in + bias_bits]``."""

    def __init__(self, weights: list[np.ndarray], n_inputs: int, backend: str = "packed") -> None:
        if not weights:
            raise ValueError("a Boolean network needs at least one layer")
        if backend not in KERNELS:
            raise ValueError(f"backend must be one of {sorted(KERNELS)}, got {backend!r}")
        for k, w in enumerate(weights):
            w = check_binary(w, f"layer {k} weights")
            if w.ndim != 2:
                raise ValueError(f"layer {k} weights must be [n_out, fan_in], got {w.shape}")
            n_in = weights[k - 1].shape[0] if k else n_inputs
            if w.shape[1] != n_in + bias_bits(n_in):
                raise ValueError(
                    f"layer {k}: fan-in {w.shape[1]} ≠ {n_in} inputs + {bias_bits(n_in)} bias bits"
                )
        self.weights = [check_binary(w).copy() for w in weights]
        self.n_inputs = n_inputs
        self.backend = backend
        self.kernel = KERNELS[backend]

    @property
    def sizes(self) -> list[int]:
        """Layer widths, inputs first."""
        return [self.n_inputs] + [w.shape[0] for w in self.weights]

    def forward(self, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Bool inputs ``[S, n_0]`` → each layer's biased input ``[S, fan_in]`` and agreements."""
        a = check_binary(x)
        if a.ndim != 2 or a.shape[1] != self.sizes[0]:
            raise ValueError(f"expected inputs [samples, {self.sizes[0]}], got {a.shape}")
        inputs, agreements = [], []
        for w in self.weights:
            biased = with_bias(a)
            agree = w.shape[1] - self.kernel(biased, w)
            inputs.append(biased)
            agreements.append(agree)
            a = 2 * agree > w.shape[1]
        return inputs, agreements

    def predict(self, x: np.ndarray) -> np.ndarray:
        """One output: the output bit ``[S]`` (0/1); several: index of the most agreeing output."""
        _, agreements = self.forward(x)
        last = agreements[-1]
        if last.shape[1] == 1:
            return (2 * last[:, 0] > self.weights[-1].shape[1]).astype(np.int64)
        return last.argmax(axis=1)

    def state_dict(self) -> dict[str, Any]:
        """Packed weights (what a device stores) and the bit counts to unpack them."""
        return {
            "packed_weights": [pack_bits(w) for w in self.weights],
            "fan_in": [w.shape[1] for w in self.weights],
            "n_inputs": self.n_inputs,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], backend: str = "packed") -> BooleanNetwork:
        """Rebuild from :meth:`state_dict` output."""
        missing = {"packed_weights", "fan_in", "n_inputs"} - set(state)
        if missing:
            raise ValueError(f"Boolean network state lacks keys {sorted(missing)}")
        weights = [
            unpack_bits(np.asarray(p), n)
            for p, n in zip(state["packed_weights"], state["fan_in"], strict=True)
        ]
        return cls(weights, int(state["n_inputs"]), backend)
