"""Device bearer tokens: 32 random bytes handed out once, stored only as sha256.

Why sha256 and not scrypt/PBKDF2: those slow, salted hashes exist to protect
*low-entropy* secrets (passwords) from guessing. A token of 32 bytes from
:mod:`secrets` has 256 bits of entropy, so guessing it from a leaked hash is
infeasible even at sha256 speed, and a per-token salt adds nothing. An unsalted
hash also lets authentication look the device up by an indexed column in one
query instead of trying every device's salt.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_BYTES = 32
#: upper bound on what :func:`hash_token` accepts; real tokens are 43 characters
MAX_TOKEN_CHARS = 256


def new_token() -> str:
    """A fresh URL-safe bearer token (43 characters, 256 bits of entropy)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """Hex sha256 of the token's UTF-8 bytes — the only form the database keeps."""
    if not isinstance(token, str):
        raise TypeError(f"token must be a str, got {type(token).__name__}")
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented token with a stored hash."""
    return hmac.compare_digest(hash_token(token), stored_hash)
