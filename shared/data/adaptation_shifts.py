"""Validation and test camera shifts of the *device adaptation* benchmark (``bench/device.py``).

Every tunable setting of LeanTTA, zeroth-order adaptation, the BN baselines and the detectors
under shift is chosen on the validation corruption types (applied to the ``val`` split's clips);
the test corruption types (applied to the ``test`` split's clips) are used once, for the chosen
settings. The two sets share no corruption type.

The rule was fixed in advance, not picked from results: the 12 original types listed family by
family (noise, blur, weather/lighting, digital, in the order of ``CORRUPTIONS``), alternate
entries go to validation and test, so both sets hold noise, blur, lighting and digital shifts.
The tuples are written out so that new corruption types added later do not move them.

This split is the device-adaptation one. The HyperNetwork's training / validation / test shift
split is :data:`shared.data.device_shifts.SHIFT_SPLIT` (whole families held out); the two are
kept apart on purpose (docs/architecture.md says why) and named differently.
"""

from __future__ import annotations

#: Corruption types on which adaptation and detector settings are chosen (``val`` clips).
ADAPTATION_VALIDATION_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "impulse_noise",
    "defocus_blur",
    "brightness",
    "fog",
    "jpeg_compression",
)
#: Held-out corruption types for the one test report (``test`` clips).
ADAPTATION_TEST_CORRUPTIONS: tuple[str, ...] = (
    "shot_noise",
    "speckle_noise",
    "motion_blur",
    "contrast",
    "pixelate",
    "colour_cast",
)
#: The family of each type (both sets must hold every family).
CORRUPTION_FAMILY: dict[str, str] = {
    "gaussian_noise": "noise",
    "shot_noise": "noise",
    "impulse_noise": "noise",
    "speckle_noise": "noise",
    "defocus_blur": "blur",
    "motion_blur": "blur",
    "brightness": "weather_lighting",
    "contrast": "weather_lighting",
    "fog": "weather_lighting",
    "pixelate": "digital",
    "jpeg_compression": "digital",
    "colour_cast": "digital",
}
#: Which data split's clips each shift set corrupts.
ADAPTATION_CLIP_SPLIT: dict[str, str] = {"validation": "val", "test": "test"}


def adaptation_corruptions(part: str) -> tuple[str, ...]:
    """The corruption types of ``part``: ``"validation"`` or ``"test"``."""
    if part == "validation":
        return ADAPTATION_VALIDATION_CORRUPTIONS
    if part == "test":
        return ADAPTATION_TEST_CORRUPTIONS
    raise ValueError(f"part must be 'validation' or 'test', got {part!r}")
