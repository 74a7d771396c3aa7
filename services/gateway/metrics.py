"""Every Prometheus metric of the gateway, in one place, on a per-app registry.

The names are a contract: ``deploy/grafana/dashboards/recsys.json`` queries them.
With several worker processes (``RECSYS_WORKERS``), ``python -m services.gateway``
sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start: every process writes its
values there and ``/metrics``, whichever worker answers, adds them up
(prometheus-client's multiprocess mode; the version gauge then has a ``pid`` label).

    recsys_request_latency_seconds{route}        histogram, route = the path template
    recsys_stage_latency_seconds{stage}          histogram, stage = recall|features|scoring
    recsys_requests_total{route, status}         counter
    recsys_cold_starts_total                     counter, users the bundle does not know
    recsys_fallbacks_total{reason}               counter, online_tower|global_hot|memory_hot|inline_scoring
    recsys_errors_total{kind}                    counter, redis|bundle|validation|reload|scorer|internal
    recsys_served_version_info{version}          gauge, 1 for the bundle version being served
    recsys_bundle_load_failures_total{reason}    counter, missing|corrupt|non_finite|probe|invalid
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from shared.errors import BundleError

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# from 0.5 ms: a recommendation takes a few milliseconds, a degraded one a timeout
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The gateway's metrics, registered on ``registry`` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram(
            "recsys_request_latency_seconds", "Request latency by route template",
            ["route"], buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.stage_latency = Histogram(
            "recsys_stage_latency_seconds", "Latency of each stage of a recommendation",
            ["stage"], buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "recsys_requests",
            "Requests by route template and status",
            ["route", "status"],
            registry=r,
        )
        self.cold_starts = Counter(
            "recsys_cold_starts", "Requests for users the served bundle does not know", registry=r
        )
        self.fallbacks = Counter(
            "recsys_fallbacks", "Recall answered by a fallback source", ["reason"], registry=r
        )
        self.errors = Counter("recsys_errors", "Errors by kind", ["kind"], registry=r)
        self.anchor_recalls = Counter(
            "recsys_anchor_recalls",
            "Recalls blended with an anchor item's nearest items (anchor=ITEM)",
            registry=r,
        )
        self.fresh_recalls = Counter(
            "recsys_fresh_recalls", "Recall from a user's events newer than the bundle", registry=r
        )
        self.fresh_warmed = Counter(
            "recsys_fresh_warmed",
            "Users whose fresh side the scoring process computed on their events, ahead of "
            "their next request",
            registry=r,
        )
        self.events = Counter("recsys_events", "Events posted, by outcome", ["outcome"], registry=r)
        self.served_version = Gauge(
            "recsys_served_version_info", "1 for the bundle version being served",
            ["version"], registry=r, multiprocess_mode="liveall",
        )  # fmt: skip
        self._version: str | None = None
        self.bundle_load_failures = Counter(
            "recsys_bundle_load_failures", "Bundle versions refused, by the class of problem",
            ["reason"], registry=r,
        )  # fmt: skip
        for stage in ("recall", "features", "scoring"):
            self.stage_latency.labels(stage)
        for reason in ("online_tower", "global_hot", "memory_hot", "inline_scoring"):
            self.fallbacks.labels(reason)
        for reason in BundleError.REASONS:
            self.bundle_load_failures.labels(reason)
        for outcome in ("accepted", "duplicate"):
            self.events.labels(outcome)

    def serve_version(self, version: str) -> None:
        """Mark ``version`` as the one served (and the previous one as not)."""
        if self._version is not None:
            self.served_version.labels(self._version).set(0)
        self.served_version.labels(version).set(1)
        self._version = version

    def close(self) -> None:
        """A worker process that stops takes its live gauges with it (multiprocess mode)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.mark_process_dead(os.getpid())

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (of every worker process)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
