"""The one reader of saved files: unreadable bytes, a foreign format and an unknown version."""

from __future__ import annotations

import pytest
import torch

from shared.saved_files import load_saved, save_payload


def test_a_saved_payload_reads_back_at_a_readable_version():
    data = save_payload({"format": "f", "format_version": 2, "w": torch.arange(3)})
    payload = load_saved(data, "f", (1, 2), "test file")
    assert payload["format_version"] == 2 and payload["w"].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a torch file", "not a readable test file"),
        (save_payload({"format": "other", "format_version": 1}), "not a test file"),
        (save_payload({"format": "f", "format_version": 3}), "version 3 is not supported"),
        (save_payload({"format": "f"}), "version None is not supported"),
    ],
)
def test_anything_else_is_a_value_error_naming_what_was_expected(data, message):
    with pytest.raises(ValueError, match=message):
        load_saved(data, "f", (1, 2), "test file")
