"""Prometheus metrics for elections (needs the ``metrics`` extra: prometheus-client).

Names follow client-go where it has one: ``leader_election_master_status{name}`` is 1 while
this process leads. The engine calls the observer; it never imports prometheus itself.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["ElectionMetrics"]


class ElectionMetrics:
    """An election observer that records into a prometheus ``CollectorRegistry``."""

    def __init__(self, registry: Any = None) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError as exc:  # pragma: no cover - exercised without the extra
            raise ImportError("metrics need prometheus-client: pip install 'celery-leader[metrics]'") from exc
        self.registry = registry if registry is not None else CollectorRegistry()
        self.master_status = Gauge(
            "leader_election_master_status", "1 while this process leads the election", ["name"], registry=self.registry
        )
        self.transitions = Counter(
            "leader_election_transitions", "terms started or ended by this process", ["name", "event"], registry=self.registry
        )
        self.renew_seconds = Histogram(
            "leader_election_renew_duration_seconds",
            "time of one renewal write",
            ["name", "outcome"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.lease_left = Gauge(
            "leader_election_lease_seconds_left", "seconds until the local lease deadline (0 when not leading)",
            ["name"], registry=self.registry,
        )
        self._elections: dict[str, Any] = {}

    @classmethod
    def create(cls) -> ElectionMetrics:
        return cls()

    # observer interface used by the drivers
    def renewed(self, election: Any, seconds: float, ok: bool) -> None:
        self.renew_seconds.labels(election.name, "ok" if ok else "error").observe(seconds)

    def state_changed(self, election: Any, leading: bool) -> None:
        self._elections[election.name] = election
        self.master_status.labels(election.name).set(1 if leading else 0)
        self.transitions.labels(election.name, "started" if leading else "stopped").inc()

    def refresh(self) -> None:
        """Update the time-dependent gauges (called before each scrape)."""
        for name, election in self._elections.items():
            lead = election.leadership
            self.lease_left.labels(name).set(max(0.0, lead.deadline - time.monotonic()) if lead else 0.0)
            self.master_status.labels(name).set(1 if election.is_leader else 0)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        self.refresh()
        return generate_latest(self.registry)
