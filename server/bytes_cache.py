"""A least-recently-used cache bounded by the bytes its entries take, not by their count.

Parsed HE contexts (≈ 26 MiB each at N = 8192) and encoded plaintext diagonals
(≈ 4 MB per selection) differ in size by parameter set, so a count limit says
nothing about memory; this one does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

_Key = TypeVar("_Key")
_Value = TypeVar("_Value")


class BytesBoundedCache(Generic[_Key, _Value]):
    """Least-recently-used cache whose entries' sizes (``size_of``) sum to at most ``max_bytes``.

    The newest entry is always kept, even alone over the budget, so a single
    large context still works. Thread-safe.
    """

    def __init__(self, max_bytes: int, size_of: Callable[[_Value], int]) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._entries: OrderedDict[_Key, _Value] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: _Key) -> _Value | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: _Key, value: _Value) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= self._size_of(old)
            self._entries[key] = value
            self._bytes += self._size_of(value)
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= self._size_of(evicted)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
