"""A user module that takes its time to import (``python:tests.harness.user_ops_slow:Slow``):
it keeps a core busy for a second first, as a heavy import (a model, a framework) would."""

from __future__ import annotations

import time
from typing import Any

from echo_agent.operators.base import Operator, Record

IMPORT_SECONDS = 1.0

_end = time.monotonic() + IMPORT_SECONDS
while time.monotonic() < _end:
    pass


class Slow(Operator):
    def process(self, record: Record) -> Any:
        return [record]
