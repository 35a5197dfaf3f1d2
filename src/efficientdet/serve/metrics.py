"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own.

Each app gets its own :class:`prometheus_client.CollectorRegistry`, so several apps in one process (tests,
embedding) never share counters; under ``uvicorn --workers N`` every worker is a replica with its own
figures (scrape each one, or aggregate in Prometheus).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Requests by endpoint and status, request latency, forward-pass batch sizes, queue depth, images."""

    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("efficientdet_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("efficientdet_request_seconds", "time from receiving a request to its answer",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        batch_buckets = tuple(sorted({1, 2, 4, 8, 16, 32, 64, max_batch}))
        self.batch_size = Histogram("efficientdet_batch_size", "images per forward pass",
                                    buckets=batch_buckets, registry=self.registry)
        self.inference = Histogram("efficientdet_inference_seconds", "time of one batched forward pass "
                                   "(pre-processing, network and post-processing)", buckets=_LATENCY_BUCKETS,
                                   registry=self.registry)
        self.queue_depth = Gauge("efficientdet_queue_depth", "images waiting for a forward pass",
                                 registry=self.registry)
        self.images = Counter("efficientdet_images", "images run through the model", registry=self.registry)
        self.ready = Gauge("efficientdet_ready", "1 once the model is loaded and warmed up", registry=self.registry)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.images.inc(size)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
