"""``python -m echo_master`` / ``echo-master``."""

from __future__ import annotations

import sys


def main() -> None:
    from echo_shared.lifecycle import run_service

    from .app import run
    from .settings import MasterSettings

    settings = MasterSettings()
    sys.exit(
        run_service(settings.service_name, lambda stop: run(settings, stop), log_level=settings.log_level)
    )


if __name__ == "__main__":
    main()
