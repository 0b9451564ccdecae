"""No single client can stall the gateway: call caps, reserved threads and a stream watchdog.

The gRPC server runs every RPC on one thread pool, so a caller holding a
stream open holds a thread. Three things keep health checks and enrolment
answering however the data RPCs are used:

- **caps** (:class:`CallLimits`): data RPCs (``UploadContext``, ``GetModel``,
  ``Personalize``) may run ``max_data`` at once in all and ``per_device`` per
  device, and ``Personalize`` (CKKS work: memory and CPU) ``max_he`` of those;
  telemetry has its own ``max_telemetry`` (it never waits behind HE work) and
  ``Enroll`` its own ``max_enroll``. One call more is refused at once
  with ``RESOURCE_EXHAUSTED`` and trailing metadata ``retry-after-ms`` — except
  an enrolment, which first waits (up to ``enroll_wait_s``, at most
  ``enroll_waiting`` of them) for a slot: enrolments are short, and a burst of
  devices served in turn finishes sooner than one retrying after backoffs;
- **reserved threads**: the pool is sized as the sum of the caps plus
  :data:`RESERVED_THREADS` (:func:`pool_size`), so health, reflection and the
  enrolment slots always find a free thread — a separate pool in effect;
- **a watchdog** (:class:`StreamWatchdog`): every upload and download stream is
  cancelled with a status once it waits longer than ``message_timeout_s`` for
  the next chunk, stays open longer than ``stream_timeout_s``, or (uploads)
  falls below ``min_bytes_per_s`` after :data:`RATE_GRACE_S` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from server.gateway.auth import (
    ENROLL_METHOD,
    GATEWAY_SERVICE,
    Behavior,
    current_device_id,
    wrap_handler,
)
from server.gateway.errors import GatewayError, abort_with

log = logging.getLogger(__name__)

GATEWAY_PREFIX = f"/{GATEWAY_SERVICE}/"
DATA_METHODS = frozenset(
    GATEWAY_PREFIX + name for name in ("UploadContext", "GetModel", "Personalize")
)
TELEMETRY_METHOD = GATEWAY_PREFIX + "ReportTelemetry"
#: data calls that run CKKS work (parse a context, evaluate H); also capped on their own
HE_METHOD = GATEWAY_PREFIX + "Personalize"
#: threads kept free of every capped call: health checks, reflection, refusals
RESERVED_THREADS = 4
#: what a refused caller is told to wait (trailing metadata ``retry-after-ms``)
RETRY_AFTER_MS = 500
#: seconds an upload may start slowly before the minimum rate applies
RATE_GRACE_S = 5.0
#: how often the watchdog looks at open streams (seconds)
WATCH_INTERVAL_S = 0.2


def pool_size(max_data: int, max_telemetry: int, max_enroll: int, enroll_waiting: int = 0) -> int:
    """Threads the gRPC server needs so that the reserved ones stay free."""
    return max_data + max_telemetry + max_enroll + enroll_waiting + RESERVED_THREADS


def overloaded(message: str) -> GatewayError:
    """A ``RESOURCE_EXHAUSTED`` refusal carrying the retry hint."""
    return GatewayError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"{message}; retry after {RETRY_AFTER_MS} ms",
        retry_after_ms=RETRY_AFTER_MS,
    )


class CallLimits:
    """Counts calls in flight by class and device; ``claim`` admits or refuses one."""

    def __init__(
        self,
        max_data: int,
        per_device: int,
        max_telemetry: int,
        max_enroll: int,
        max_he: int | None = None,
        enroll_waiting: int = 0,
        enroll_wait_s: float = 0.0,
    ):
        self.max_data = max_data
        self.max_he = max_data if max_he is None else max_he
        self.per_device = per_device
        self.max_telemetry = max_telemetry
        self.max_enroll = max_enroll
        self.enroll_waiting = enroll_waiting
        self.enroll_wait_s = enroll_wait_s
        self._lock = threading.Lock()
        self._enroll_slot_free = threading.Condition(self._lock)
        self._enroll_waiters = 0
        self._data = 0
        self._telemetry = 0
        self._enroll = 0
        self._he = 0
        self._per_device: Counter[str] = Counter()

    def claim(self, method: str, device_id: str | None) -> Callable[[], None]:
        """Admit a call of ``method`` (by ``device_id``); returns its idempotent release."""
        with self._lock:
            if method in DATA_METHODS:
                if self._data >= self.max_data:
                    raise overloaded(
                        f"the gateway is serving {self.max_data} data calls, its limit"
                    )
                if device_id is not None and self._per_device[device_id] >= self.per_device:
                    raise overloaded(
                        f"this device already has {self.per_device} data calls open, the limit "
                        "per device"
                    )
                if method == HE_METHOD and self._he >= self.max_he:
                    raise overloaded(f"{self.max_he} encrypted evaluations in flight, the limit")
                self._he += method == HE_METHOD
                self._data += 1
                if device_id is not None:
                    self._per_device[device_id] += 1
            elif method == TELEMETRY_METHOD:
                if self._telemetry >= self.max_telemetry:
                    raise overloaded(f"{self.max_telemetry} telemetry calls in flight, the limit")
                self._telemetry += 1
            elif method == ENROLL_METHOD:
                self._wait_for_enrolment_slot()
                self._enroll += 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                if method in DATA_METHODS:
                    self._data -= 1
                    self._he -= method == HE_METHOD
                    if device_id is not None:
                        self._per_device[device_id] -= 1
                        if self._per_device[device_id] <= 0:
                            del self._per_device[device_id]
                elif method == TELEMETRY_METHOD:
                    self._telemetry -= 1
                elif method == ENROLL_METHOD:
                    self._enroll -= 1
                    self._enroll_slot_free.notify()

        return release

    def _wait_for_enrolment_slot(self) -> None:
        """Return once an enrolment slot is free (lock held); refuse if the wait is full or long."""
        if self._enroll < self.max_enroll:
            return
        if self._enroll_waiters >= self.enroll_waiting:
            raise overloaded(
                f"{self.max_enroll} enrolments in flight and {self.enroll_waiting} waiting, "
                "the limit"
            )
        self._enroll_waiters += 1
        try:
            free = self._enroll_slot_free.wait_for(
                lambda: self._enroll < self.max_enroll, timeout=self.enroll_wait_s
            )
        finally:
            self._enroll_waiters -= 1
        if not free:
            raise overloaded(f"no enrolment slot free within {self.enroll_wait_s:g} s")

    def in_flight(self) -> dict[str, int]:
        """Calls in flight by class (for logs and tests)."""
        with self._lock:
            return {
                "data": self._data,
                "he": self._he,
                "telemetry": self._telemetry,
                "enroll": self._enroll,
            }


def cancel_call(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """End an RPC from another thread with ``code`` and ``message`` (unblocks its handler).

    grpcio's public ``context.cancel()`` can only say CANCELLED; the call object
    under it can cancel with a status, which the device then sees. Without that
    object (another grpcio), fall back to the public cancel.
    """
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    try:
        from grpc._cython import cygrpc

        call.cancel(getattr(cygrpc.StatusCode, code.name.lower()), message)  # type: ignore[union-attr]
    except Exception:
        context.cancel()


@dataclass
class _Watched:
    context: grpc.ServicerContext
    upload: bool
    started: float
    last_message: float
    received: int = 0
    ended: bool = False


class StreamWatchdog:
    """One thread that cancels stalled or overlong streams with a clear status."""

    def __init__(
        self,
        message_timeout_s: float,
        stream_timeout_s: float,
        min_bytes_per_s: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.message_timeout_s = message_timeout_s
        self.stream_timeout_s = stream_timeout_s
        self.min_bytes_per_s = min_bytes_per_s
        self._clock = clock
        self._lock = threading.Lock()
        self._streams: dict[int, _Watched] = {}
        self._thread: threading.Thread | None = None  # runs only while streams are open

    def watch_upload(self, context: grpc.ServicerContext, chunks: Iterator[Any]) -> Iterator[Any]:
        """``chunks`` with every message timed; the stream is cancelled when it stalls."""
        watched = self._register(context, upload=True)
        try:
            for chunk in chunks:
                watched.last_message = self._clock()
                watched.received += len(getattr(chunk, "data", b""))
                yield chunk
        finally:
            self._unregister(watched)

    def watch_download(
        self, context: grpc.ServicerContext, messages: Iterator[Any]
    ) -> Iterator[Any]:
        """``messages`` sent under the stream deadline and the per-message timeout."""
        watched = self._register(context, upload=False)
        try:
            for message in messages:
                yield message  # returns once the client has taken it (flow control)
                watched.last_message = self._clock()
        finally:
            self._unregister(watched)

    def _register(self, context: grpc.ServicerContext, upload: bool) -> _Watched:
        now = self._clock()
        watched = _Watched(context, upload, now, now)
        with self._lock:
            self._streams[id(watched)] = watched
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="grpc-watchdog", daemon=True
                )
                self._thread.start()
        return watched

    def _unregister(self, watched: _Watched) -> None:
        with self._lock:
            watched.ended = True
            self._streams.pop(id(watched), None)

    def _verdict(self, watched: _Watched, now: float) -> tuple[grpc.StatusCode, str] | None:
        open_s, idle_s = now - watched.started, now - watched.last_message
        what = "upload" if watched.upload else "download"
        if open_s > self.stream_timeout_s:
            return grpc.StatusCode.DEADLINE_EXCEEDED, (
                f"{what} stream open for more than {self.stream_timeout_s:g} s, the limit"
            )
        if idle_s > self.message_timeout_s:
            return grpc.StatusCode.DEADLINE_EXCEEDED, (
                f"{what} stalled: no message for {self.message_timeout_s:g} s, the limit"
            )
        if watched.upload and self.min_bytes_per_s and open_s > RATE_GRACE_S:
            rate = watched.received / open_s
            if rate < self.min_bytes_per_s:
                return grpc.StatusCode.RESOURCE_EXHAUSTED, (
                    f"upload too slow: {rate:.0f} bytes/s, below the minimum of "
                    f"{self.min_bytes_per_s} bytes/s"
                )
        return None

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            now = self._clock()
            with self._lock:
                if not self._streams:
                    self._thread = None  # the next stream starts a new watcher
                    return
                streams = list(self._streams.values())
            for watched in streams:
                verdict = self._verdict(watched, now)
                if verdict is None or watched.ended:
                    continue
                with self._lock:
                    if watched.ended:
                        continue
                    watched.ended = True
                    self._streams.pop(id(watched), None)
                log.info("cancelling a gRPC stream: %s", verdict[1])
                cancel_call(watched.context, *verdict)


class LimitsInterceptor(grpc.ServerInterceptor):
    """Applies :class:`CallLimits` and :class:`StreamWatchdog` to every gateway call.

    Installed after :class:`~server.gateway.auth.DeviceAuthInterceptor`, so it
    runs for admitted callers only and knows the calling device.
    """

    def __init__(self, limits: CallLimits, watchdog: StreamWatchdog) -> None:
        self.limits = limits
        self.watchdog = watchdog

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(GATEWAY_PREFIX):
            return handler  # health and reflection: never capped, served by reserved threads

        def wrap(behavior: Behavior) -> Behavior:
            def limited(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    release = self.limits.claim(method, current_device_id())
                except GatewayError as refusal:
                    abort_with(context, refusal)
                context.add_callback(release)  # also when the client goes away
                if handler.request_streaming:
                    request = self.watchdog.watch_upload(context, request)
                try:
                    result = behavior(request, context)
                except BaseException:
                    release()
                    raise
                finally:
                    if handler.request_streaming:
                        request.close()  # stop watching: the servicer has read what it wanted
                if handler.response_streaming:
                    return _released_after(self.watchdog.watch_download(context, result), release)
                release()
                return result

            return limited

        return wrap_handler(handler, wrap)


def _released_after(messages: Iterator[Any], release: Callable[[], None]) -> Iterator[Any]:
    try:
        yield from messages
    finally:
        release()
