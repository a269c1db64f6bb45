"""What the agent and a worker process share: frames, the worker's environment, exit wording.

A frame is a 4-byte big-endian length and that many bytes of JSON (orjson). Requests go
to the worker's stdin as ``{"id", "op", ...args}``; answers come on its stdout as
``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error"}``, and what the operator
emits outside a call (``ctx.emit`` from a timer) as ``{"emit": [records]}`` frames in
between, in the order it emitted them.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import orjson

from .sandbox import minimal_environment

FRAME = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024


class BadFrame(ValueError):
    pass


def encode(obj: Any) -> bytes:
    """One frame (``TypeError`` when ``obj`` is not JSON: say, bytes in a record)."""
    data = orjson.dumps(obj)
    if len(data) > MAX_FRAME:
        raise TypeError(f"a message of {len(data)} bytes (at most {MAX_FRAME})")
    return FRAME.pack(len(data)) + data


def write_frame(out: IO[bytes], obj: Any) -> None:
    out.write(encode(obj))
    out.flush()


def _read_exactly(inp: IO[bytes], n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        part = inp.read(n)
        if not part:
            break
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def read_frame(inp: IO[bytes]) -> Any | None:
    """The next frame, or None at the end of the stream (also in the middle of a frame: the
    writer is gone); ``BadFrame`` for one that cannot be a frame."""
    head = _read_exactly(inp, FRAME.size)
    if len(head) < FRAME.size:
        return None
    (n,) = FRAME.unpack(head)
    if n > MAX_FRAME:
        raise BadFrame(f"a frame of {n} bytes")
    data = _read_exactly(inp, n)
    if len(data) < n:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise BadFrame(f"a frame that is no JSON: {e}") from e


def worker_env(environ: Mapping[str, str] | None = None, path: list[str] | None = None) -> dict[str, str]:
    """What a worker inherits: a safe ``PATH``, ``HOME``, a UTF-8 locale and the agent's import
    path (so the user module imports as it would in the agent). Never the rest of the
    agent's environment: broker URLs, logins, token files, ``ECHO_*`` settings."""
    environ = os.environ if environ is None else environ
    entries = list(sys.path if path is None else path)
    if "" in entries:  # the agent's working directory, which the worker shares
        entries[entries.index("")] = os.getcwd()
    dirs = [p for p in entries if p and Path(p).is_dir()]
    return {
        **minimal_environment(environ.get("HOME", "/")),
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(dirs)),
        "PYTHONUNBUFFERED": "1",
    }


def describe_exit(code: int | None) -> str:
    """``exited with code N`` or ``was killed by signal NAME`` (a Popen return code)."""
    if code is None:
        return "ended"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
