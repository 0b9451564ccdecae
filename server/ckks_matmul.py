"""Enc(z)·A + c on the cloud with SEAL directly: baby-step giant-step diagonals, encoded once.

TenSEAL's ``CKKSVector.matmul`` encodes n plaintext diagonals on every call and
rotates by every step 1 … n−1 — and a step that is not a power of two costs
SEAL several key switches (one per term of its signed binary form). This module
evaluates the same product with far fewer rotations, on plaintexts encoded once:

- TenSEAL encrypts a vector of n values *replicated* cyclically over all slots,
  so rotating the ciphertext x left by t gives ``rot(x, t)[k] = z[(k + t) mod n]``;
- with the generalised diagonals ``D_t[k] = A[(k + t) mod n, k]``,
  ``Θ[k] = Σ_t rot(x, t)[k] · D_t[k]`` for every output k (while k + t < slots);
- baby-step giant-step, t = g·B + b:
  ``Θ = Σ_g rot(Σ_b rot(x, b) ⊙ rot(D_{gB+b}, −gB), g·B)``, evaluated Horner-style:
  B − 1 rotations by 1 and G − 1 by B (B a power of two: one key switch each),
  B chosen to minimise the total — 10 key switches for n = 32 instead of about 60;
- the diagonals depend only on the selected rows of A and the CKKS parameters,
  so their plaintexts (already in NTT form) are encoded once and reused.

One multiplicative level is used (the plain product, then one rescale), as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal
from google.protobuf.message import DecodeError

from server.ckks_wire import (
    CKKSVectorProto,
    TenSEALContextProto,
    seal_load,
    seal_loaded_size,
    seal_save,
)
from shared.he import FOREIGN_CIPHERTEXT

#: memory of one parsed context beyond its keys (SEALContext NTT/RNS tables per level,
#: Galois permutation tables, encoder, evaluator), per coefficient × prime: measured
#: 247 B at N = 4096 and 8192 with 3 primes (RSS per parsed context), plus 30 % margin
CONTEXT_TABLE_BYTES_PER_COEFF_PRIME = 320


#: a context may take at most this many times its serialised size in memory once parsed
#: (key material is uniform modulo its primes, stored in 8-byte words: with primes of
#: 20 bits or more it compresses less than 64/20 = 3.2 x; measured 1.85 x at N = 4096
#: [40, 20, 40] and 1.4 x at N = 8192 [60, 40, 60]) ...
MAX_PARSED_PER_SERIALISED_BYTE = 4
#: ... or this much, whichever is more (the tables of a small context without Galois keys)
MIN_PARSED_ALLOWANCE_BYTES = 32 * 1024 * 1024


def parsed_bytes_limit(serialised_bytes: int) -> int:
    """The most memory a context of ``serialised_bytes`` may take once parsed."""
    return max(MAX_PARSED_PER_SERIALISED_BYTE * serialised_bytes, MIN_PARSED_ALLOWANCE_BYTES)


def context_table_bytes(degree: int, primes: int) -> int:
    """Memory of a parsed context's own tables (SEALContext, encoder, evaluator)."""
    return CONTEXT_TABLE_BYTES_PER_COEFF_PRIME * degree * primes


def parsed_context_bytes(degree: int, primes: int, galois_keys: int) -> int:
    """Memory a parsed public context takes (an upper estimate; the cache budgets by it).

    Each switching key (``galois_keys`` of them plus the relinearisation key) is
    (primes − 1) ciphertexts of 2 polynomials × ``primes`` × N coefficients ×
    8 bytes; the context's own tables grow with N × primes.
    """
    keys = (galois_keys + 1) * (primes - 1) * 2 * primes * degree * 8
    return keys + context_table_bytes(degree, primes)


class PrivateContextError(ValueError):
    """The context holds a secret key: the cloud must never hold one."""


def _not_a_context(error: object) -> ValueError:
    return ValueError(f"not a serialised TenSEAL context: {error}")


@dataclass(frozen=True)
class EvaluationKeys:
    """A device's public CKKS material, parsed once: what evaluating on its ciphertexts needs."""

    context: seal.SEALContext
    galois_keys: seal.GaloisKeys
    evaluator: seal.Evaluator
    encoder: seal.CKKSEncoder
    #: (N, prime bit sizes) — equal for two contexts whose plaintexts are interchangeable
    parameters: tuple[int, tuple[int, ...]]
    #: scale of fresh ciphertexts (the context's global scale)
    scale: float
    #: approximate memory the parsed keys take
    nbytes: int

    @property
    def slots(self) -> int:
        return self.parameters[0] // 2

    @classmethod
    def from_public_context(cls, data: bytes) -> EvaluationKeys:
        """Parse ``Context.serialize()`` of a *public* CKKS context with Galois keys.

        ValueError if the bytes are not a TenSEAL context, are not CKKS, or break
        SEAL's 128-bit security bound, or would take more memory parsed than
        :func:`parsed_bytes_limit` allows; :class:`PrivateContextError` if they
        hold a secret key.
        """
        try:
            message = TenSEALContextProto.FromString(data)
        except DecodeError as error:
            raise _not_a_context(error) from None
        if message.private_context.secret_key:
            raise PrivateContextError(
                "context holds a secret key; the cloud accepts only public contexts"
            )
        limit = parsed_bytes_limit(len(data))
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        try:
            if seal_loaded_size(message.encryption_parameters, limit) > limit:
                raise ValueError("encryption parameters expand past the limit")
            seal_load(parms, message.encryption_parameters)
        except Exception as error:  # SEAL raises on bad or non-CKKS parameters
            raise _not_a_context(error) from None
        if parms.scheme() != seal.SCHEME_TYPE.CKKS:
            raise ValueError(f"context uses the {parms.scheme().name} scheme; CKKS is needed")
        galois = message.public_context.galois_keys
        _check_parsed_size(parms, galois, len(data), limit)
        scale = message.public_context.scale
        del message  # its copy of the upload
        return cls._load(parms, galois, scale)

    @classmethod
    def _load(cls, parms: seal.EncryptionParameters, galois: bytes, scale: float) -> EvaluationKeys:
        """The SEAL objects of a checked context (``scale`` 0: the default for its primes)."""
        context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        if not context.parameters_set():
            raise ValueError(
                "context parameters are refused by SEAL at 128-bit security: "
                f"{context.parameters_error_message()}"
            )
        galois_keys = seal.GaloisKeys()  # without them only a 1-row product works
        if galois:
            try:
                seal_load(galois_keys, galois, context)
            except Exception as error:
                raise _not_a_context(f"unreadable Galois keys ({error})") from None
        degree = parms.poly_modulus_degree()
        bits = tuple(prime.bit_count() for prime in parms.coeff_modulus())
        nbytes = parsed_context_bytes(degree, len(bits), galois_keys.size())
        scale = scale or 2.0 ** bits[min(1, len(bits) - 1)]
        return cls(
            context,
            galois_keys,
            seal.Evaluator(context),
            seal.CKKSEncoder(context),
            (degree, bits),
            scale,
            nbytes,
        )


def _check_parsed_size(
    parms: seal.EncryptionParameters, galois_keys: bytes, serialised_bytes: int, limit: int
) -> None:
    """Refuse, before SEAL allocates anything, a context that would not fit ``limit`` parsed."""
    tables = context_table_bytes(parms.poly_modulus_degree(), len(parms.coeff_modulus()))
    keys = 0
    if galois_keys:
        try:
            keys = seal_loaded_size(galois_keys, limit)
        except ValueError as error:
            raise _not_a_context(f"unreadable Galois keys ({error})") from None
    if tables + keys > limit:
        raise ValueError(
            f"context would take more than {limit} bytes in memory once parsed "
            f"({serialised_bytes} bytes serialised; the limit is "
            f"{MAX_PARSED_PER_SERIALISED_BYTE} x that, at least {MIN_PARSED_ALLOWANCE_BYTES})"
        )


def baby_steps(n: int) -> int:
    """Power-of-two baby-step count B minimising the key switches (B − 1) + (⌈n/B⌉ − 1)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    candidates = [1 << k for k in range(n.bit_length())]
    return min(candidates, key=lambda b: (b - 1) + (-(-n // b) - 1))


@dataclass(frozen=True)
class _EncodedChunk:
    """The diagonals of output columns [low, high): plaintext per (giant g, baby b)."""

    low: int
    high: int
    diagonals: dict[tuple[int, int], seal.Plaintext]


@dataclass(frozen=True)
class EncodedRows:
    """Rows A[indices] [n, M] (and offset c [M]) as plaintext diagonals for one parameter set."""

    n: int
    baby: int
    giant: int
    chunks: tuple[_EncodedChunk, ...]
    offset: np.ndarray
    nbytes: int

    @property
    def size(self) -> int:
        """Outputs M."""
        return int(self.offset.size)


def encode_rows(keys: EvaluationKeys, rows: np.ndarray, offset: np.ndarray) -> EncodedRows:
    """Encode the diagonals of ``rows`` [n, M] once, at the level and scale of fresh ciphertexts.

    Outputs are split into chunks of at most ``slots − n`` so that k + t never
    passes the last slot (beyond it the rotation wraps onto other values).
    """
    rows = np.asarray(rows, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.float64)
    n, size = rows.shape
    if offset.shape != (size,):
        raise ValueError(f"offset must be [{size}], got {list(offset.shape)}")
    slots = keys.slots
    room = slots - n
    if room < 1:
        raise ValueError(f"{n} inputs leave no room in {slots} slots")
    baby = baby_steps(n)
    giant = -(-n // baby)
    level = keys.context.first_parms_id()
    chunks = []
    for low in range(0, size, room):
        high = min(low + room, size)
        columns = np.arange(high - low)
        diagonals: dict[tuple[int, int], seal.Plaintext] = {}
        for g in range(giant):
            for b in range(baby):
                t = g * baby + b
                if t >= n:
                    break
                diagonal = np.zeros(slots)
                diagonal[: high - low] = rows[(columns + t) % n, low + columns]
                plain = seal.Plaintext()
                keys.encoder.encode(np.roll(diagonal, g * baby).tolist(), level, keys.scale, plain)
                diagonals[g, b] = plain
        chunks.append(_EncodedChunk(low, high, diagonals))
    primes = len(keys.parameters[1]) - 1
    nbytes = n * len(chunks) * primes * keys.parameters[0] * 8
    return EncodedRows(n, baby, giant, tuple(chunks), offset, nbytes)


def read_vector(keys: EvaluationKeys, data: bytes) -> tuple[seal.Ciphertext, int, float]:
    """A serialised one-ciphertext ``CKKSVector``: (ciphertext, its size, its TenSEAL scale)."""
    if not isinstance(data, bytes) or not data:
        raise ValueError("ciphertext must be non-empty bytes (CKKSVector.serialize())")
    try:
        message = CKKSVectorProto.FromString(data)
        if len(message.ciphertexts) != 1 or len(message.sizes) != 1:
            raise ValueError(f"{len(message.ciphertexts)} ciphertexts where one was expected")
        ciphertext = seal.Ciphertext()
        seal_load(ciphertext, message.ciphertexts[0], keys.context)
    except Exception as error:
        raise ValueError(
            f"ciphertext {FOREIGN_CIPHERTEXT} ({error}); send "
            "CKKSVector.serialize() made with the context you uploaded"
        ) from None
    return ciphertext, int(message.sizes[0]), float(message.scale)


def evaluate(
    keys: EvaluationKeys, encoded: EncodedRows, ciphertext: seal.Ciphertext, vector_scale: float
) -> list[bytes]:
    """``Enc(z)·A[indices] + c`` as serialised ``CKKSVector`` chunks (TenSEAL decrypts them).

    SEAL errors (wrong level, missing Galois key, scale out of range) become ValueError.
    """
    evaluator, galois_keys = keys.evaluator, keys.galois_keys
    try:
        babies = [ciphertext]
        for _ in range(1, encoded.baby):
            rotated = seal.Ciphertext()
            evaluator.rotate_vector(babies[-1], 1, galois_keys, rotated)
            babies.append(rotated)
        answers = []
        for chunk in encoded.chunks:
            total: seal.Ciphertext | None = None
            for g in reversed(range(encoded.giant)):
                part: seal.Ciphertext | None = None
                for b in range(encoded.baby):
                    plain = chunk.diagonals.get((g, b))
                    if plain is None:
                        break
                    product = seal.Ciphertext()
                    evaluator.multiply_plain(babies[b], plain, product)
                    if part is None:
                        part = product
                    else:
                        evaluator.add_inplace(part, product)
                assert part is not None
                if total is not None:
                    evaluator.rotate_vector_inplace(total, encoded.baby, galois_keys)
                    evaluator.add_inplace(part, total)
                total = part
            assert total is not None
            evaluator.rescale_to_next_inplace(total)
            offset = seal.Plaintext()
            keys.encoder.encode(
                encoded.offset[chunk.low : chunk.high].tolist(),
                total.parms_id(),
                total.scale,
                offset,
            )
            evaluator.add_plain_inplace(total, offset)
            message = CKKSVectorProto(
                sizes=[chunk.high - chunk.low], ciphertexts=[seal_save(total)], scale=vector_scale
            )
            answers.append(message.SerializeToString())
    except (ValueError, RuntimeError, TypeError) as error:
        raise ValueError(f"cannot evaluate H on this ciphertext: {error}") from None
    return answers
