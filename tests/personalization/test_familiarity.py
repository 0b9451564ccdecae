"""The familiarity reference: H's training devices' window means and the ratio a device reads."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from shared.familiarity import FamiliarityReference, familiarity_reference
from shared.hypernet import HyperNetwork, HyperNetworkConfig, hypernet_from_state, hypernet_state


def means(seed: int = 0, devices: int = 20, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(devices, dim))


def test_the_scale_is_the_median_distance_to_the_nearest_other_device():
    m = means()
    reference = familiarity_reference(m)
    nearest = [
        min(np.linalg.norm(m[i] - m[j]) for j in range(len(m)) if j != i) for i in range(len(m))
    ]
    assert reference.scale == pytest.approx(float(np.median(nearest)), rel=1e-6)


def test_the_ratio_is_zero_on_a_training_device_and_grows_away_from_them():
    m = means()
    reference = familiarity_reference(m)
    assert reference.ratio(m[3]) == pytest.approx(0.0, abs=1e-6)
    far = m[3] + 10 * reference.scale * np.eye(m.shape[1])[0]
    assert reference.ratio(far) > 5
    assert reference.familiar(m[3]) and not reference.familiar(far)
    nearest = np.linalg.norm(m - far, axis=1).min()
    assert reference.ratio(far) == pytest.approx(nearest / reference.scale, rel=1e-5)


def test_bytes_round_trip_and_damaged_bytes_are_refused():
    reference = familiarity_reference(means())
    data = reference.to_bytes()
    again = FamiliarityReference.from_bytes(data)
    assert again.sha256 == reference.sha256 and again.scale == reference.scale
    assert np.array_equal(again.means, reference.means)
    for damaged, message in (
        (data[:10], "truncated"),
        (data[:-4], "expected"),
        (data + b"\0" * 4, "expected"),
        (b"XXXX" + data[4:], "magic"),
    ):
        with pytest.raises(ValueError, match=message):
            FamiliarityReference.from_bytes(damaged)


@pytest.mark.parametrize(
    "bad", [np.zeros((1, 4)), np.zeros(4), np.full((3, 4), np.nan)], ids=["one", "1d", "nan"]
)
def test_bad_references_are_refused(bad):
    with pytest.raises(ValueError):
        FamiliarityReference(bad, 1.0)


def test_bad_window_means_are_refused():
    reference = familiarity_reference(means())
    with pytest.raises(ValueError, match="window mean must be"):
        reference.ratio(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        reference.ratio(np.full(8, np.nan))


def test_a_saved_hypernetwork_keeps_its_reference_and_an_older_one_has_none():
    model = HyperNetwork(HyperNetworkConfig(embed_dim=8, num_classes=3, variant="device"))
    plain = hypernet_from_state(hypernet_state(model))
    assert plain.familiarity is None
    model.familiarity = familiarity_reference(means())
    buffer = io.BytesIO()
    torch.save(hypernet_state(model), buffer)
    buffer.seek(0)
    loaded = hypernet_from_state(torch.load(buffer, weights_only=True))
    assert loaded.familiarity is not None
    assert loaded.familiarity.sha256 == model.familiarity.sha256
