"""Argument checks every registry call makes before it touches the database.

Bad arguments are ``TypeError``/``ValueError`` with a message naming the argument,
raised before any row or blob is written.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

from server.registry.tables import NAME_LEN

#: longest model variant name (``"float"``, ``"int8"``, ...)
VARIANT_LEN = 32


def now() -> datetime:
    """The time stamps rows get (aware UTC)."""
    return datetime.now(UTC)


def check_name(value: object, what: str, max_len: int = NAME_LEN) -> str:
    """``value`` if it is a non-blank str of at most ``max_len`` characters."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value.strip() or len(value) > max_len:
        raise ValueError(f"{what} must be a non-empty string of at most {max_len} characters")
    return value


def check_json(value: object, what: str, allow_none: bool = False) -> dict[str, Any] | None:
    """A deep copy of ``value`` if it is a JSON object (dict with str keys, finite numbers)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict (a JSON object), got {type(value).__name__}")
    try:
        # allow_nan=False: NaN/inf are not JSON and PostgreSQL would reject them.
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be JSON-serialisable with finite numbers: {error}") from None
    return copy.deepcopy(value)


def check_id(value: object, what: str) -> str:
    """``value`` if it is a non-empty str (row ids of devices and jobs are UUID strings)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str (a UUID), got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must be a non-empty string")
    return value
