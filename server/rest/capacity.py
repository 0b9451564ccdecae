"""Bounded admission for expensive REST work: a few run, a few wait, the rest get 429.

Scoring runs model forward passes on a thread pool; letting every request in
would only grow a queue whose tail times out anyway. :class:`ScoringGate`
admits ``concurrent`` requests at once and lets ``waiting`` more queue; one more
is refused at once with :class:`OverloadedError` (HTTP 429 with ``Retry-After``),
before its body is read. Claiming and releasing a slot is plain arithmetic on
the event loop (no lock, no thread hop).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

#: seconds an overloaded client is told to wait before retrying
OVERLOAD_RETRY_AFTER_S = 1
DEFAULT_CONCURRENT_SCORING = 4
DEFAULT_WAITING_SCORING = 16


class OverloadedError(RuntimeError):
    """Over capacity; retry after ``retry_after_s`` seconds (HTTP 429)."""

    def __init__(self, message: str, retry_after_s: int = OVERLOAD_RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ScoringGate:
    """At most ``concurrent`` scoring requests run and ``waiting`` more wait; others get 429."""

    def __init__(
        self,
        concurrent: int = DEFAULT_CONCURRENT_SCORING,
        waiting: int = DEFAULT_WAITING_SCORING,
    ) -> None:
        if concurrent < 1 or waiting < 0:
            raise ValueError(f"need concurrent >= 1 and waiting >= 0, got {concurrent}, {waiting}")
        self.concurrent = concurrent
        self.limit = concurrent + waiting
        self.admitted = 0
        self._running: asyncio.Semaphore | None = None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a scoring slot for the block; raises :class:`OverloadedError` when full."""
        if self.admitted >= self.limit:
            raise OverloadedError(
                f"the server is scoring {self.limit} requests (its limit: {self.concurrent} at "
                f"once, {self.limit - self.concurrent} waiting); retry shortly"
            )
        if self._running is None:  # created on the serving loop, on first use
            self._running = asyncio.Semaphore(self.concurrent)
        self.admitted += 1
        try:
            async with self._running:
                yield
        finally:
            self.admitted -= 1
