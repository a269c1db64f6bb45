"""The migrator's figures for Prometheus: moves by result, their downtime, failovers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from echo_shared import metrics as m
from echo_shared.messages import Migration

MOVE_STEPS = ("drain", "restore")  # a planned move drains the task; a failover restores it


def downtime(mig: Migration) -> float | None:
    """Seconds the task ran nowhere: from the start of its move (drain or restore) to its
    new copy running (the end of ``resume``); None if it did not resume."""
    move = next((s for s in mig.steps if s.name in MOVE_STEPS and s.started_at), None)
    resume = next((s for s in mig.steps if s.name == "resume" and s.state == "done"), None)
    if move is None or resume is None or not resume.ended_at:
        return None
    return max(0.0, resume.ended_at - move.started_at)


class MigratorMetrics:
    def __init__(self) -> None:
        self.registry: CollectorRegistry = m.new_registry()
        self.downtime = m.histogram(
            self.registry, m.MIGRATION_DOWNTIME, "how long a moved task ran nowhere (move start to running)"
        )
        self.migrations = m.counter(self.registry, m.MIGRATIONS, "migrations ended, by result", ("result",))
        self.failovers = m.counter(self.registry, m.FAILOVERS, "tasks moved off a lost or revoked device")

    def ended(self, mig: Migration) -> None:
        """A saga reached an end state (completed, failed, rolled_back)."""
        self.migrations.labels(mig.state).inc()
        if mig.state == "completed":
            seconds = downtime(mig)
            if seconds is not None:
                self.downtime.observe(seconds)

    def failed_over(self) -> None:
        self.failovers.inc()
