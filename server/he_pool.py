"""HE evaluation in worker processes, one per core, each device always on the same worker.

SEAL's calls hold Python's GIL, so in one server process encrypted requests run
one at a time however many cores there are. :class:`HEWorkerPool` moves the
evaluation into ``workers`` processes. A device is pinned to one worker (a
stable hash of its id), so its parsed context lives in exactly one process —
memory stays bounded by each worker's byte budget — and the worker that parsed
it at upload is the one that serves its requests. The gRPC thread waits on the
worker without holding the GIL, so requests of devices on different workers
run in parallel.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.bytes_cache import BytesBoundedCache
from server.ckks_matmul import EncodedRows, EvaluationKeys, encode_rows, evaluate, read_vector

# -- inside a worker process -------------------------------------------------------------------


@dataclass
class _WorkerState:
    contexts: BytesBoundedCache[tuple[str, str], EvaluationKeys]
    rows: BytesBoundedCache[tuple[object, ...], EncodedRows]
    store_root: Path


_state: _WorkerState | None = None


def _exit_with(parent: int) -> None:
    """Leave when the server process is gone, even if it could not shut the pool down."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _start_worker(
    max_context_bytes: int, max_rows_bytes: int, store_root: str, parent: int
) -> None:
    global _state
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    _state = _WorkerState(
        BytesBoundedCache(max_context_bytes, lambda keys: keys.nbytes),
        BytesBoundedCache(max_rows_bytes, lambda rows: rows.nbytes),
        Path(store_root),
    )


def _worker_state() -> _WorkerState:
    if _state is None:
        raise RuntimeError("not inside an HE worker process")
    return _state


def _keep(device_id: str, sha256: str, data: bytes) -> None:
    _worker_state().contexts.put((device_id, sha256), EvaluationKeys.from_public_context(data))


def _context(device_id: str, sha256: str) -> EvaluationKeys:
    state = _worker_state()
    keys = state.contexts.get((device_id, sha256))
    if keys is None:  # evicted (or the pool restarted): read it back from the artifact store
        from server.registry.artifacts import ArtifactStore

        keys = EvaluationKeys.from_public_context(
            ArtifactStore(state.store_root).read_bytes(sha256)
        )
        state.contexts.put((device_id, sha256), keys)
    return keys


def _evaluate(
    device_id: str,
    context_sha256: str,
    rows_key: tuple[object, ...],
    rows: np.ndarray,
    offset: np.ndarray,
    ciphertext: bytes,
) -> list[bytes]:
    keys = _context(device_id, context_sha256)
    vector, size, scale = read_vector(keys, ciphertext)
    if size != rows.shape[0]:
        raise ValueError(f"ciphertext holds {size} values but {rows.shape[0]} indices were sent")
    cache = _worker_state().rows
    key = (*rows_key, keys.parameters, keys.scale)
    encoded = cache.get(key)
    if encoded is None:
        encoded = encode_rows(keys, rows, offset)
        cache.put(key, encoded)
    return evaluate(keys, encoded, vector, scale)


# -- in the server process ---------------------------------------------------------------------


class HEWorkerPool:
    """``workers`` single-process pools; device ``d`` always goes to the same one."""

    def __init__(
        self, workers: int, store_root: Path, max_context_bytes: int, max_rows_bytes: int
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        context = multiprocessing.get_context("spawn")  # never fork a process running gRPC
        budget = (max_context_bytes // workers, max_rows_bytes // workers, str(store_root))
        budget += (os.getpid(),)
        self._pools = [
            ProcessPoolExecutor(1, mp_context=context, initializer=_start_worker, initargs=budget)
            for _ in range(workers)
        ]

    def _pool(self, device_id: str) -> ProcessPoolExecutor:
        digest = hashlib.sha256(device_id.encode()).digest()
        return self._pools[int.from_bytes(digest[:4], "big") % len(self._pools)]

    def keep_context(self, device_id: str, sha256: str, data: bytes) -> None:
        """Parse the device's uploaded context in its worker now (waits until done)."""
        self._pool(device_id).submit(_keep, device_id, sha256, data).result()

    def evaluate(
        self,
        device_id: str,
        context_sha256: str,
        rows_key: tuple[object, ...],
        rows: np.ndarray,
        offset: np.ndarray,
        ciphertext: bytes,
    ) -> list[bytes]:
        """Θ chunks for the device's ciphertext, computed in its worker; ValueError if refused."""
        future = self._pool(device_id).submit(
            _evaluate, device_id, context_sha256, rows_key, rows, offset, ciphertext
        )
        return future.result()

    def close(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)
