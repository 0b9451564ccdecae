"""CKKS (TenSEAL) for SecDOOD: validated parameters, contexts, and the wire format.

The device owns a private context (secret key never leaves it) and uploads the
public part once; per request it sends ``Enc(z[indices])`` and receives
``Enc(Θ)`` split over as many ciphertexts as the slot count needs. Every
ciphertext travels as ``CKKSVector.serialize()`` bytes.

Depth: the cloud computes one vector × plain-matrix product plus a plain add,
which consumes one 40-bit level of the default chain [60, 40, 40, 60].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tenseal as ts
from pydantic import BaseModel, ConfigDict, Field, model_validator

#: how the cloud says a ciphertext was not made under the context it holds for the device
#: (the device then uploads its current public context and asks again)
FOREIGN_CIPHERTEXT = "does not parse under this device's context"
#: SEAL's limit on the total coefficient-modulus bits at 128-bit security, per ring size N
MAX_MODULUS_BITS: dict[int, int] = {4096: 109, 8192: 218, 16384: 438, 32768: 881}


class CKKSParams(BaseModel):
    """CKKS settings; defaults are the product's (N = 8192, [60, 40, 40, 60], scale 2^40).

    Validated so a bad setting fails at configuration time, not deep inside SEAL:
    N must be a supported power of two, the chain must hold ≥ 3 primes (special
    prime + one multiplicative level + the output prime), each 20..60 bits,
    within the 128-bit-security budget for N, and the inner primes must equal the
    scale bits (otherwise rescaling distorts the result).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = Field(40, ge=20, le=60)

    @model_validator(mode="after")
    def _check_chain(self) -> CKKSParams:
        n, chain = self.poly_modulus_degree, self.coeff_mod_bit_sizes
        if n not in MAX_MODULUS_BITS:
            raise ValueError(
                f"poly_modulus_degree must be one of {sorted(MAX_MODULUS_BITS)}, got {n}"
            )
        if len(chain) < 3:
            raise ValueError(
                f"coeff_mod_bit_sizes needs >= 3 primes (one multiplication level), got {chain}"
            )
        if any(not 20 <= bits <= 60 for bits in chain):
            raise ValueError(f"every prime must be 20..60 bits, got {chain}")
        if sum(chain) > MAX_MODULUS_BITS[n]:
            raise ValueError(
                f"coeff_mod_bit_sizes sum to {sum(chain)} bits; N = {n} allows at most "
                f"{MAX_MODULUS_BITS[n]} for 128-bit security"
            )
        if any(bits != self.scale_bits for bits in chain[1:-1]):
            raise ValueError(
                f"inner primes {chain[1:-1]} must equal scale_bits = {self.scale_bits}"
            )
        if chain[0] <= self.scale_bits:
            raise ValueError(
                f"the first prime ({chain[0]} bits) must exceed scale_bits ({self.scale_bits}) "
                "to keep the integer part of decrypted values"
            )
        return self

    @property
    def slots(self) -> int:
        """Values one ciphertext holds (N / 2)."""
        return self.poly_modulus_degree // 2


def create_context(params: CKKSParams | None = None) -> ts.Context:
    """A new *private* CKKS context with Galois keys (for rotations in the cloud's matmul)."""
    params = params or CKKSParams()
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    context.global_scale = 2.0**params.scale_bits
    context.generate_galois_keys()
    return context


def public_context_bytes(context: ts.Context) -> bytes:
    """The serialised public part (public, Galois and relinearisation keys; no secret key)."""
    return context.serialize(save_secret_key=False)


def load_public_context(data: bytes) -> ts.Context:
    """Parse a context the cloud may hold; ValueError if unreadable or if it can decrypt."""
    try:
        context = ts.context_from(data)
    except Exception as error:  # TenSEAL raises ValueError/RuntimeError on bad bytes
        raise ValueError(f"not a serialised TenSEAL context: {error}") from None
    if context.is_private():
        raise ValueError("context holds a secret key; the cloud accepts only public contexts")
    return context


def slot_count(context: ts.Context) -> int:
    """Values one ciphertext under ``context`` holds (N / 2)."""
    return context.seal_context().data.key_context_data().parms().poly_modulus_degree() // 2


def output_chunk_size(context: ts.Context, input_size: int) -> int:
    """Most outputs one vector × matrix product may produce from ``input_size`` inputs.

    TenSEAL's diagonal method rotates the input across the slots; outputs beyond
    ``slots − input_size`` wrap around onto the input and come back wrong
    (measured: 5 inputs, 2048 outputs at N = 4096 → error 0.1), so chunks stop there.
    """
    size = slot_count(context) - input_size
    if size < 1:
        raise ValueError(f"{input_size} inputs leave no room in {slot_count(context)} slots")
    return size


def chunk_bounds(size: int, slots: int) -> list[tuple[int, int]]:
    """[start, stop) ranges splitting a length-``size`` vector into pieces of ≤ ``slots``."""
    if size < 1 or slots < 1:
        raise ValueError(f"size and slots must be >= 1, got {size} and {slots}")
    return [(start, min(start + slots, size)) for start in range(0, size, slots)]


def encrypt_selected(context: ts.Context, z: np.ndarray, indices: np.ndarray) -> bytes:
    """``Enc(z[indices])`` serialised: z is one embedding [D], indices sorted channel ids."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 1:
        raise ValueError(f"encrypt one embedding [D] at a time, got shape {list(z.shape)}")
    selected = z[np.asarray(indices, dtype=np.int64)]
    if selected.size > slot_count(context):
        raise ValueError(
            f"{selected.size} values do not fit one ciphertext ({slot_count(context)})"
        )
    return ts.ckks_vector(context, selected.tolist()).serialize()


def ciphertext_from(context: ts.Context, data: bytes) -> ts.CKKSVector:
    """Parse a serialised CKKSVector under ``context``; ValueError with the reason if invalid.

    SEAL refuses truncated bytes and ciphertexts made under other parameters;
    a ciphertext made under other keys with the same parameters parses but
    decrypts to noise (undetectable in the cloud; the device checks Θ's range).
    """
    if not isinstance(data, bytes) or not data:
        raise ValueError("ciphertext must be non-empty bytes (CKKSVector.serialize())")
    try:
        return ts.ckks_vector_from(context, data)
    except Exception as error:
        raise ValueError(
            f"ciphertext {FOREIGN_CIPHERTEXT} ({error}); send "
            "CKKSVector.serialize() made with the context you uploaded"
        ) from None


def decrypt_theta(
    context: ts.Context, ciphertexts: Sequence[bytes], theta_size: int, max_abs: float = 1e6
) -> np.ndarray:
    """Decrypt and join the Θ chunks → float64 [theta_size].

    ``max_abs`` guards against a wrong-key result: decrypting under the wrong
    secret key gives huge noise, never a plausible classifier.
    """
    if not context.is_private():
        raise ValueError("decrypting needs the device's private context (with the secret key)")
    parts = [np.asarray(ciphertext_from(context, data).decrypt()) for data in ciphertexts]
    theta = np.concatenate(parts) if parts else np.empty(0)
    if theta.size != theta_size:
        raise ValueError(f"decrypted {theta.size} values, expected theta of size {theta_size}")
    if not np.isfinite(theta).all() or np.abs(theta).max() > max_abs:
        raise ValueError(
            "decrypted theta is out of range: the reply was not computed on this device's "
            "ciphertext or under its keys"
        )
    return theta
