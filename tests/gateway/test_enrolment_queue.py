"""A burst of enrolments waits for a free slot (bounded), instead of being refused at once."""

from __future__ import annotations

import threading
import time

import pytest

from server.gateway.auth import ENROLL_METHOD
from server.gateway.errors import GatewayError
from server.gateway.limits import CallLimits, pool_size


def test_an_enrolment_waits_for_a_slot_and_the_queue_is_bounded():
    limits = CallLimits(max_data=1, per_device=1, max_telemetry=1, max_enroll=1,
                        enroll_waiting=1, enroll_wait_s=10.0)  # fmt: skip
    first = limits.claim(ENROLL_METHOD, None)
    admitted = threading.Event()

    def second() -> None:
        limits.claim(ENROLL_METHOD, None)
        admitted.set()

    waiter = threading.Thread(target=second)
    waiter.start()
    time.sleep(0.2)
    assert not admitted.is_set()  # waiting, not refused
    with pytest.raises(GatewayError, match="1 enrolments in flight and 1 waiting"):
        limits.claim(ENROLL_METHOD, None)  # the queue is full: refused at once
    first()
    waiter.join(5)
    assert admitted.is_set()
    assert limits.in_flight()["enroll"] == 1


def test_an_enrolment_that_waits_too_long_is_refused_with_a_retry_hint():
    limits = CallLimits(max_data=1, per_device=1, max_telemetry=1, max_enroll=1,
                        enroll_waiting=4, enroll_wait_s=0.2)  # fmt: skip
    limits.claim(ENROLL_METHOD, None)
    started = time.monotonic()
    with pytest.raises(GatewayError, match="no enrolment slot free within 0.2 s") as caught:
        limits.claim(ENROLL_METHOD, None)
    assert time.monotonic() - started >= 0.2
    assert caught.value.retry_after_ms > 0
    assert limits.in_flight()["enroll"] == 1


def test_waiting_enrolments_get_threads_of_their_own():
    assert pool_size(16, 4, 4, 16) == pool_size(16, 4, 4) + 16
