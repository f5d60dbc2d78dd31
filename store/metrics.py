"""Prometheus metrics of the store API: request counts and latency, and store size gauges.

Everything lives on the API's own ``CollectorRegistry`` (never the process-global one), so several
apps in one process, or in one test session, do not collide. Store gauges come from
``store.queries.stats`` and are recomputed on a scrape at most every ``refresh_s`` seconds: stats
runs a few aggregate queries over ``trees``, cheap but not free on a large store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import Engine

from store.queries import stats

__all__ = ["ApiMetrics", "CONTENT_TYPE_LATEST"]

_TOTALS = ("problems", "problems_searched", "trees", "solved_trees", "solved_problems", "nodes")


@dataclass
class ApiMetrics:
    refresh_s: float = 15.0
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _refreshed_at: float = -1e18

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "rstar_api_requests", "HTTP requests served.", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "rstar_api_request_seconds",
            "HTTP request handling time.",
            ["route"],
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.totals = Gauge(
            "rstar_store_rows", "Store totals (problems, trees, nodes, solved …).", ["what"], registry=r
        )
        self.round_trees = Gauge("rstar_store_round_trees", "Trees stored per round.", ["round"], registry=r)
        self.round_solved = Gauge(
            "rstar_store_round_solved_trees", "Solved trees stored per round.", ["round"], registry=r
        )
        self.refresh_errors = Counter("rstar_store_metrics_refresh_errors", "Failed store gauge refreshes.", registry=r)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def refresh_store(self, engine: Engine) -> None:
        """Recompute the store gauges if they are older than ``refresh_s`` (blocking: run in a thread)."""
        now = time.monotonic()
        if now - self._refreshed_at < self.refresh_s:
            return
        try:
            s = stats(engine)
        except Exception:
            self.refresh_errors.inc()  # counted here; the /metrics handler logs it, answers with the last values
            raise
        for k in _TOTALS:
            self.totals.labels(k).set(s[k])
        for r in s["by_round"]:
            self.round_trees.labels(str(r["round"])).set(r["trees"])
            self.round_solved.labels(str(r["round"])).set(r["solved_trees"])
        self._refreshed_at = now

    def render(self) -> bytes:
        return generate_latest(self.registry)
