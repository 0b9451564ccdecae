"""One wording for pydantic validation errors, wherever a config or request is parsed."""

from __future__ import annotations

from pydantic import ValidationError


def validation_message(error: ValidationError, root: str = "body") -> str:
    """One line naming every invalid field, e.g. ``inputs.0.shape: Input should be a list``.

    ``root`` names a problem of the whole object (an empty location)."""
    return "; ".join(
        f"{'.'.join(map(str, item['loc'])) or root}: {item['msg']}" for item in error.errors()
    )
