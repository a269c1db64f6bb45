"""A running testbed for a test: devices in network namespaces behind the delay proxy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from echo_cli.devstack import Brokers
from echo_cli.testbed.fleet import TestbedDevice
from echo_cli.testbed.network import unavailable_reason
from echo_cli.testbed.runner import Testbed
from tests.conftest import FAST_LIVENESS, unique_namespace


@contextlib.contextmanager
def running_testbed(
    brokers: Brokers, workdir: Path, devices: Sequence[TestbedDevice], request: pytest.FixtureRequest
) -> Iterator[Testbed]:
    """Skipped (with the reason) where namespaces cannot be made; the logs printed when the
    test failed."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    tb = Testbed(brokers, workdir, tuple(devices), namespace=unique_namespace(), extra_env=FAST_LIVENESS)
    tb.start(timeout=60)
    try:
        yield tb
    finally:
        tb.stop()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for log in sorted(tb.logs.glob("*.log")):
                print(f"----- {log.name} -----\n{log.read_text(errors='replace')[-6000:]}")
