"""Prometheus metrics of the REST API, served at ``/metrics``.

- ``secdood_http_requests_total{method, route, status}``: requests by route
  *template* (``/v2/models/{name}/infer``, not the concrete path, so label
  cardinality stays bounded; unmatched paths count as ``<unmatched>``, unknown
  methods as ``OTHER``; a client that left before the answer as status 499);
- ``secdood_http_request_duration_seconds{method, route}``: latency histogram;
- ``secdood_inference_items_total{endpoint, detector}``: items (feature rows or
  clips) scored, and ``secdood_ood_verdicts_total{endpoint, detector}`` of
  those judged OOD;
- ``secdood_model_ready``: 1 once a model is loaded.

Each app gets its own :class:`~prometheus_client.CollectorRegistry`, so several
apps in one process (tests) do not clash.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.pipeline import Verdicts

UNMATCHED_ROUTE = "<unmatched>"
#: every HTTP method label; anything else a client sends is counted as OTHER_METHOD
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"
#: status label of a request whose client went away before the answer (nginx's convention)
CLIENT_CLOSED_REQUEST = 499
#: seconds; scoring a batch of clips on a CPU can take a few seconds
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    """The collectors of one app, registered in their own registry."""

    def __init__(self, is_ready: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "secdood_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "secdood_http_request_duration_seconds",
            "HTTP request latency in seconds, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.items_scored = Counter(
            "secdood_inference_items",
            "Feature rows or clips scored, by endpoint and detector.",
            ["endpoint", "detector"],
            registry=self.registry,
        )
        self.ood_verdicts = Counter(
            "secdood_ood_verdicts",
            "Scored items judged out-of-distribution, by endpoint and detector.",
            ["endpoint", "detector"],
            registry=self.registry,
        )
        ready = Gauge(
            "secdood_model_ready", "1 once a model is loaded and served.", registry=self.registry
        )
        ready.set_function(lambda: float(is_ready()))

    def record_verdicts(self, endpoint: str, verdicts: Verdicts) -> None:
        """Count a scored batch (``endpoint`` is a short name such as ``"v2_infer"``)."""
        n_items = int(verdicts.ood_score.numel())
        self.items_scored.labels(endpoint, verdicts.detector).inc(n_items)
        self.ood_verdicts.labels(endpoint, verdicts.detector).inc(int(verdicts.is_ood.sum()))


class MetricsMiddleware:
    """ASGI middleware that times every HTTP request and counts it by route template."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status_code = 500  # if the app dies before answering, that is what the client sees
        started = time.perf_counter()
        method = scope["method"] if scope["method"] in KNOWN_METHODS else OTHER_METHOD

        async def send_and_note_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        except OSError:  # the connection broke while answering: the client left
            status_code = CLIENT_CLOSED_REQUEST
            raise
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
            self.metrics.requests.labels(method, template, str(status_code)).inc()
