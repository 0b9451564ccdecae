"""CKKS parameters, public contexts, and encrypted vs plaintext personalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from support import SMALL_PARAMS, make_hypernet

from shared.he import (
    CKKSParams,
    chunk_bounds,
    ciphertext_from,
    create_context,
    decrypt_theta,
    encrypt_selected,
    load_public_context,
    output_chunk_size,
    public_context_bytes,
)
from shared.hypernet import personalised_logits


def test_default_params_are_the_products():
    params = CKKSParams()
    assert params.poly_modulus_degree == 8192
    assert params.coeff_mod_bit_sizes == (60, 40, 40, 60)
    assert params.scale_bits == 40 and params.slots == 4096


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"poly_modulus_degree": 5000}, "one of"),
        ({"coeff_mod_bit_sizes": (60, 40)}, ">= 3 primes"),
        ({"coeff_mod_bit_sizes": (60, 40, 40, 60, 60)}, "218"),
        ({"coeff_mod_bit_sizes": (60, 30, 40, 60)}, "scale_bits"),
        ({"coeff_mod_bit_sizes": (60, 70, 60)}, "20..60"),
        ({"coeff_mod_bit_sizes": (40, 40, 60)}, "first prime"),
        ({"scale_bits": 10}, "greater than or equal"),
    ],
)
def test_bad_params_are_refused(overrides, message):
    with pytest.raises(ValidationError, match=message):
        CKKSParams(**overrides)


def test_public_context_cannot_decrypt(small_context):
    public = load_public_context(public_context_bytes(small_context))
    assert small_context.is_private() and not public.is_private()
    vector = ciphertext_from(public, encrypt_selected(small_context, np.ones(4), np.arange(4)))
    with pytest.raises(ValueError, match="secret"):
        vector.decrypt()
    with pytest.raises(ValueError, match="private context"):
        decrypt_theta(public, [vector.serialize()], 4)
    with pytest.raises(ValueError, match="secret key"):
        load_public_context(small_context.serialize(save_secret_key=True))
    with pytest.raises(ValueError, match="not a serialised"):
        load_public_context(b"nonsense")


def test_truncated_and_foreign_ciphertexts_are_refused(small_context, default_context):
    public = load_public_context(public_context_bytes(small_context))
    data = encrypt_selected(small_context, np.arange(6.0), np.arange(6))
    with pytest.raises(ValueError, match="does not parse"):
        ciphertext_from(public, data[: len(data) // 2])
    foreign = encrypt_selected(default_context, np.arange(6.0), np.arange(6))
    with pytest.raises(ValueError, match="does not parse"):
        ciphertext_from(public, foreign)


def test_wrong_key_result_is_caught_on_decrypt(small_context):
    other = create_context(SMALL_PARAMS)
    data = encrypt_selected(other, np.arange(5.0), np.arange(5))
    with pytest.raises(ValueError, match="out of range"):
        decrypt_theta(small_context, [data], 5)


def test_chunk_bounds_cover_everything():
    assert chunk_bounds(774, 4096) == [(0, 774)]
    assert chunk_bounds(5000, 2048) == [(0, 2048), (2048, 4096), (4096, 5000)]


def test_encrypted_and_plaintext_personalisation_agree(default_context, default_public_bytes):
    """The product setting: D = 128, C = 6, N = 8192, α = 0.25 — logits agree within 1e-3."""
    model = make_hypernet(128, 6)
    a, c = (t.numpy() for t in model.affine_map())
    public = load_public_context(default_public_bytes)
    rng = np.random.default_rng(0)
    z = np.maximum(rng.normal(1.0, 1.0, size=(3, 128)), 0)  # post-ReLU-like embeddings
    indices = np.sort(rng.choice(128, 32, replace=False))
    worst = 0.0
    for row in z:
        vector = ciphertext_from(public, encrypt_selected(default_context, row, indices))
        encrypted = (vector.matmul(a[indices].tolist()) + c.tolist()).serialize()
        theta = decrypt_theta(default_context, [encrypted], 774)
        mask = np.zeros(128)
        mask[indices] = 1
        with torch.no_grad():
            plain = model.theta(torch.from_numpy(row * mask).float()[None]).double()[0]
        logits = personalised_logits(torch.from_numpy(row)[None], torch.from_numpy(theta), 6)
        expected = personalised_logits(torch.from_numpy(row)[None], plain, 6)
        worst = max(worst, float((logits - expected).abs().max()))
    assert worst <= 1e-3


def test_theta_larger_than_one_ciphertext_is_chunked(small_context):
    public = load_public_context(public_context_bytes(small_context))
    rng = np.random.default_rng(1)
    a, c = rng.normal(size=(5, 3000)) * 0.1, rng.normal(size=3000)
    z = rng.uniform(size=5)
    vector = ciphertext_from(public, encrypt_selected(small_context, z, np.arange(5)))
    chunks = [
        (vector.matmul(a[:, lo:hi].tolist()) + c[lo:hi].tolist()).serialize()
        for lo, hi in chunk_bounds(3000, output_chunk_size(public, 5))
    ]
    assert len(chunks) == 2
    theta = decrypt_theta(small_context, chunks, 3000)
    assert np.abs(theta - (z @ a + c)).max() < 1e-2
    assert output_chunk_size(small_context, 5) == 2043
    with pytest.raises(ValueError, match="no room"):
        output_chunk_size(small_context, 2048)
