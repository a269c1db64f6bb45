"""Record values: numbers as the data writes them, values as dict keys."""

from __future__ import annotations

import math
from typing import Any

import orjson


def number(value: Any) -> float | None:
    """A finite number (numeric strings too, as the SenML data writes them), else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        f = float(value)
    elif isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


def key_text(value: Any) -> str:
    """A record value as a dict key: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()
