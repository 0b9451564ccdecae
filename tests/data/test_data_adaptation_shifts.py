"""The device-adaptation benchmark's validation / test split of corruption types."""

import pytest

from shared.data.adaptation_shifts import (
    ADAPTATION_TEST_CORRUPTIONS,
    ADAPTATION_VALIDATION_CORRUPTIONS,
    CORRUPTION_FAMILY,
    adaptation_corruptions,
)
from shared.data.corruptions import CORRUPTIONS


def test_validation_and_test_types_do_not_overlap():
    assert not set(ADAPTATION_VALIDATION_CORRUPTIONS) & set(ADAPTATION_TEST_CORRUPTIONS)
    assert len(set(ADAPTATION_VALIDATION_CORRUPTIONS)) == len(ADAPTATION_VALIDATION_CORRUPTIONS)
    assert len(set(ADAPTATION_TEST_CORRUPTIONS)) == len(ADAPTATION_TEST_CORRUPTIONS)


def test_both_parts_are_real_corruptions_covering_every_family():
    both = set(ADAPTATION_VALIDATION_CORRUPTIONS) | set(ADAPTATION_TEST_CORRUPTIONS)
    assert both <= set(CORRUPTIONS)
    assert both == set(CORRUPTION_FAMILY)  # the 12 original types, each in one part
    families = set(CORRUPTION_FAMILY.values())
    for part in (ADAPTATION_VALIDATION_CORRUPTIONS, ADAPTATION_TEST_CORRUPTIONS):
        assert {CORRUPTION_FAMILY[c] for c in part} == families


def test_parts_by_name():
    assert adaptation_corruptions("validation") == ADAPTATION_VALIDATION_CORRUPTIONS
    assert adaptation_corruptions("test") == ADAPTATION_TEST_CORRUPTIONS
    with pytest.raises(ValueError, match="validation"):
        adaptation_corruptions("train")
