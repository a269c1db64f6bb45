"""The scheduler's figures for Prometheus: placements by result and how long they take."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from echo_shared import metrics as m

PLACEMENTS = "echo_placements"  # label result: placed | unplaceable
PLACEMENT_DURATION = "echo_placement_duration_seconds"


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry: CollectorRegistry = m.new_registry()
        self.placements = m.counter(
            self.registry, PLACEMENTS, "placement requests answered, by result", ("result",)
        )
        self.duration = m.histogram(
            self.registry, PLACEMENT_DURATION, "time to place a dataflow or task (the placer itself)"
        )
