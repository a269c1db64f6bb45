"""Reading the side files operators name in their configs (schema, metadata, id lists).

Paths are on the device; a relative path resolves against the agent's working
directory. Files are read once in ``open()``, off the event loop, and every problem is a
``DeviceFileError`` naming the option, the path and the device.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from .errors import DeviceFileError

MAX_SIDE_FILE = 256 * 1024 * 1024  # a side file is loaded whole: refuse absurd sizes


def _read(option: str, raw: str, device: str) -> bytes:
    path = Path(raw).expanduser()
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise DeviceFileError(option, raw, device, "is not a regular file")
        if size > MAX_SIDE_FILE:
            raise DeviceFileError(
                option, raw, device, f"is too large ({size} bytes, at most {MAX_SIDE_FILE})"
            )
        return path.read_bytes()
    except FileNotFoundError as e:
        raise DeviceFileError(option, raw, device, "does not exist") from e
    except PermissionError as e:
        raise DeviceFileError(option, raw, device, "is not readable") from e
    except IsADirectoryError as e:
        raise DeviceFileError(option, raw, device, "is a directory") from e
    except OSError as e:
        raise DeviceFileError(option, raw, device, f"cannot be read ({e.strerror or e})") from e


def looks_binary(data: bytes) -> bool:
    """NUL bytes or bytes that are not UTF-8: not a text file (e.g. a Java-serialised object)."""
    if b"\x00" in data[:65536]:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


async def read_lines(option: str, raw: str, device: str, *, binary_hint: str = "") -> list[str]:
    """The file's lines (without line ends), read off the event loop.

    Raises ``DeviceFileError`` when the file is missing, unreadable or not UTF-8 text
    (``binary_hint`` is appended to that message).
    """
    data = await asyncio.to_thread(_read, option, raw, device)
    if looks_binary(data):
        hint = f" ({binary_hint})" if binary_hint else ""
        raise DeviceFileError(option, raw, device, f"is binary, not a UTF-8 text file{hint}")
    return data.decode("utf-8").splitlines()
