"""When and how long the device waits before retrying a call the cloud refused for overload.

The gateway answers an over-capacity call with ``RESOURCE_EXHAUSTED`` and the
trailing metadata ``retry-after-ms`` (docs/protocol.md, "Overload and stalls").
Only such refusals are retried; a ``RESOURCE_EXHAUSTED`` without the hint (an
upload over the size cap) is final.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from shared.wire import RETRY_AFTER_METADATA


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of overload refusals: up to ``attempts`` tries, full-jitter exponential backoff.

    The n-th wait is uniform in ``[hint, max(hint, min(max_s, base_s * 2**n))]``,
    where ``hint`` is the server's ``retry-after-ms``; jitter spreads a fleet's
    retries so they do not arrive together again.
    """

    attempts: int = 8
    base_s: float = 0.25
    max_s: float = 8.0

    def delay(self, attempt: int, hint_s: float, rng: random.Random) -> float:
        ceiling = max(hint_s, min(self.max_s, self.base_s * 2**attempt))
        return rng.uniform(hint_s, ceiling)


#: what a client does by default, and a policy that never retries
DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)


def retry_hint_s(error: grpc.RpcError) -> float | None:
    """The server's retry hint in seconds, or None when the refusal is not an overload."""
    if not isinstance(error, grpc.Call) or error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_AFTER_METADATA:
            try:
                return max(int(value), 0) / 1000.0
            except ValueError:
                return None
    return None
