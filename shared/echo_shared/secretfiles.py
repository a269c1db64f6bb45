"""Secret files: written atomically with mode 0600, refused when others may read them.

Every secret ECHO keeps on disk (private keys, passwords, tokens, a device's
``credentials.json``) goes through ``write_secret`` and ``read_secret``. Secrets never
travel in environment variables of child processes: a process gets the *path* of a
secret file (``ECHO_CREDENTIALS_FILE``, ``ECHO_ADMIN_TOKEN_FILE``), never its content.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from .errors import EchoError


class SecretFileError(EchoError):
    """A secret file is missing, unreadable, or readable by others than its owner."""


def new_secret(nbytes: int = 32) -> str:
    """A random URL-safe secret (passwords, tokens)."""
    return secrets.token_urlsafe(nbytes)


def write_secret(
    path: Path, data: str | bytes | list[bytes], *, owner: tuple[int, int] | None = None, fsync: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 from the first byte (never world-readable).

    ``owner`` (uid, gid) hands the file to another account (a broker that drops root).
    ``fsync=False``: atomic, but left to the kernel to write out (a file rewritten often,
    whose previous version is as good after a power cut).
    """
    _write_atomic(path, data, 0o600, owner=owner, fsync=fsync)


def write_public(path: Path, data: str | bytes) -> None:
    """Write a public file (a certificate) atomically, mode 0644: a server that reads it at
    every handshake (Prometheus does) never sees it half written."""
    _write_atomic(path, data, 0o644)


def _write_atomic(
    path: Path,
    data: str | bytes | list[bytes],
    mode: int,
    *,
    owner: tuple[int, int] | None = None,
    fsync: bool = True,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    raw = data.encode() if isinstance(data, str) else data  # or pieces, written in turn
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(raw, list):
                f.writelines(raw)
            else:
                f.write(raw)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)  # whatever the umask
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_private(path: Path) -> None:
    """Refuse a secret file that its group or others may read or write."""
    try:
        st = path.stat()
    except OSError as e:
        raise SecretFileError(f"secret file {path}: {e.strerror or e}") from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(
            f"secret file {path} is accessible by others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run: chmod 600 {path}"
        )


def read_secret(path: Path) -> str:
    """The content of a 0600 secret file, stripped of surrounding whitespace."""
    check_private(path)
    try:
        return path.read_text().strip()
    except OSError as e:
        raise SecretFileError(f"secret file {path}: {e.strerror or e}") from e
