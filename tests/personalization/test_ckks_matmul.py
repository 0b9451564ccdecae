"""The cloud's SEAL evaluation of Enc(z)·A + c: agreement with plaintext, refusals, caches."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal

from server.bytes_cache import BytesBoundedCache
from server.ckks_matmul import (
    EvaluationKeys,
    PrivateContextError,
    baby_steps,
    encode_rows,
    evaluate,
    read_vector,
)
from server.ckks_wire import CKKSVectorProto, TenSEALContextProto
from shared.he import decrypt_theta, encrypt_selected, public_context_bytes


@pytest.fixture(scope="module")
def keys(small_context) -> EvaluationKeys:
    return EvaluationKeys.from_public_context(public_context_bytes(small_context))


def _theta(keys, context, z, rows, offset):
    encoded = encode_rows(keys, rows, offset)
    vector, size, scale = read_vector(keys, encrypt_selected(context, z, np.arange(z.size)))
    assert size == z.size
    chunks = evaluate(keys, encoded, vector, scale)
    return decrypt_theta(context, chunks, offset.size), len(chunks)


@pytest.mark.parametrize(("n", "best"), [(1, 1), (2, 1), (5, 2), (32, 4), (128, 8)])
def test_baby_steps_minimise_key_switches(n, best):
    def switches(b):
        return (b - 1) + (-(-n // b) - 1)

    assert baby_steps(n) == best or switches(baby_steps(n)) == switches(best)
    assert all(switches(baby_steps(n)) <= switches(1 << k) for k in range(n.bit_length()))


@pytest.mark.parametrize("n", [1, 3, 8, 13])
def test_evaluation_matches_plaintext(keys, small_context, n):
    rng = np.random.default_rng(n)
    rows, offset = rng.normal(size=(n, 60)) * 0.3, rng.normal(size=60)
    z = rng.uniform(0, 2, size=n)
    theta, chunks = _theta(keys, small_context, z, rows, offset)
    assert chunks == 1
    assert np.abs(theta - (z @ rows + offset)).max() < 1e-2  # N = 4096, 29-bit scale


def test_outputs_beyond_one_ciphertext_are_chunked(keys, small_context):
    rng = np.random.default_rng(1)
    rows, offset = rng.normal(size=(5, 3000)) * 0.1, rng.normal(size=3000)
    z = rng.uniform(size=5)
    theta, chunks = _theta(keys, small_context, z, rows, offset)
    assert chunks == 2  # 2048 slots − 5 inputs per chunk
    assert np.abs(theta - (z @ rows + offset)).max() < 1e-2


def test_context_refusals(small_context):
    with pytest.raises(PrivateContextError, match="secret key"):
        EvaluationKeys.from_public_context(small_context.serialize(save_secret_key=True))
    with pytest.raises(ValueError, match="not a serialised TenSEAL context"):
        EvaluationKeys.from_public_context(b"definitely not a context" * 10)
    bfv = tenseal.context(tenseal.SCHEME_TYPE.BFV, poly_modulus_degree=4096, plain_modulus=1032193)
    bfv.make_context_public()
    with pytest.raises(ValueError, match="BFV"):
        EvaluationKeys.from_public_context(bfv.serialize())


def test_ciphertext_refusals(keys, small_context, default_context):
    good = encrypt_selected(small_context, np.arange(4.0), np.arange(4))
    with pytest.raises(ValueError, match="does not parse"):
        read_vector(keys, good[: len(good) // 2])
    with pytest.raises(ValueError, match="does not parse"):
        read_vector(keys, encrypt_selected(default_context, np.ones(4), np.arange(4)))
    two = CKKSVectorProto.FromString(good)
    two.ciphertexts.append(two.ciphertexts[0])
    with pytest.raises(ValueError, match="2 ciphertexts"):
        read_vector(keys, two.SerializeToString())


def test_missing_galois_keys_refuse_a_product_that_needs_rotations(small_context):
    message = TenSEALContextProto.FromString(public_context_bytes(small_context))
    message.public_context.galois_keys = b""
    keys = EvaluationKeys.from_public_context(message.SerializeToString())
    encoded = encode_rows(keys, np.ones((4, 10)), np.zeros(10))
    vector, _, scale = read_vector(keys, encrypt_selected(small_context, np.ones(4), np.arange(4)))
    with pytest.raises(ValueError, match="cannot evaluate H"):
        evaluate(keys, encoded, vector, scale)


def test_bytes_bounded_cache_evicts_least_recent_but_keeps_the_newest():
    cache: BytesBoundedCache[str, bytes] = BytesBoundedCache(10, len)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # a is now the most recent
    cache.put("c", b"1234")  # 12 bytes > 10: b (least recent) goes
    assert cache.get("b") is None and cache.get("a") and cache.get("c")
    assert cache.nbytes == 8 and len(cache) == 2
    cache.put("huge", b"x" * 50)  # alone over budget, still kept
    assert len(cache) == 1 and cache.get("huge") is not None
    with pytest.raises(ValueError, match="max_bytes"):
        BytesBoundedCache(-1, len)
