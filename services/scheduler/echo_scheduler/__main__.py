"""``python -m echo_scheduler`` / ``echo-scheduler``: the service;
``python -m echo_scheduler plan SPEC --devices FILE [--strategy S]``: offline planning
(``planning``), the placement as JSON without brokers."""

from __future__ import annotations

import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "plan":
        from .planning import main as plan

        sys.exit(plan(sys.argv[2:]))

    from echo_shared.lifecycle import run_service

    from .app import run
    from .settings import SchedulerSettings

    settings = SchedulerSettings()
    sys.exit(
        run_service(settings.service_name, lambda stop: run(settings, stop), log_level=settings.log_level)
    )


if __name__ == "__main__":
    main()
