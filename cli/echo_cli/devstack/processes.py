"""Child processes that cannot outlive their parent, and small network helpers."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port(host: str = "127.0.0.1", exclude: Collection[int] = ()) -> int:
    """A port nothing listens on now, none of ``exclude`` (ports already handed out that
    their servers have not bound yet: the kernel may offer the same port twice)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in exclude:
            return port


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class PortTaken(RuntimeError):
    """The port chosen for a server was bound by another process before the server bound it."""

    def __init__(self, name: str, port: int) -> None:
        super().__init__(f"{name}: port {port} was taken by another process before it could bind it")
        self.name = name
        self.port = port


# how nats-server, Prometheus (Go: "bind: address already in use"), Redis, Mosquitto and
# Python ("[Errno 98] Address already in use") say that a port is taken
IN_USE = ("address already in use", "address in use")
START_ATTEMPTS = 5


def taken_port(output: str, ports: Sequence[int]) -> int | None:
    """Which of ``ports`` a server's ``output`` says another process held (None: none).

    A server with one port counts any "address in use" (Mosquitto does not name the port);
    of several, the one named on that line or the three before it (a traceback's)."""
    lines = output.lower().splitlines()
    for i, line in enumerate(lines):
        if not any(s in line for s in IN_USE):
            continue
        if len(ports) == 1:
            return ports[0]
        near = "\n".join(lines[max(0, i - 3) : i + 1])
        for port in ports:
            if re.search(rf"(?<!\d){port}(?!\d)", near):
                return port
    return None


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` (or a process it started) has a listening TCP socket on ``port``."""

    def holds(p: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
                    return True
        return False

    try:
        root = psutil.Process(pid)
        return holds(root) or any(holds(c) for c in root.children(recursive=True))
    except psutil.Error:
        return False


def wait_for_own_ports(host: str, ports: Sequence[int], proc: ManagedProcess, timeout: float = 15.0) -> None:
    """Until ``proc`` itself listens on every one of ``ports``: its pid holds the listening
    socket (another process answering there does not count). ``PortTaken`` (with the port)
    if it exited saying that one was in use: another process bound it after it was chosen."""
    deadline = time.monotonic() + timeout
    waiting = list(ports)
    while True:
        # something answering is not enough (another process may hold the port): its pid must
        waiting = [p for p in waiting if not (port_open(host, p) and listens(proc.pid, p))]
        if not waiting:
            return
        if not proc.alive():
            output = proc.output()
            taken = taken_port(output, list(ports))
            if taken is not None:
                raise PortTaken(proc.name, taken)
            raise RuntimeError(
                f"{proc.name} exited with {proc.returncode} before listening on {host}:{waiting[0]}; "
                f"log: {output[-4000:]}"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{proc.name} does not listen on {host}:{waiting[0]} after {timeout}s")
        time.sleep(0.05)


def wait_for_own_port(host: str, port: int, proc: ManagedProcess, timeout: float = 15.0) -> None:
    """``wait_for_own_ports`` for one port."""
    wait_for_own_ports(host, (port,), proc, timeout=timeout)


def start_on_free_port(
    host: str, start: Callable[[int], ManagedProcess], timeout: float = 15.0
) -> tuple[int, ManagedProcess]:
    """Start a server on a free port, without the race between choosing a port and binding
    it: ``start(port)`` writes the server's configuration for that port and starts it; one
    that exits because the port was taken in between (another process bound it) is started
    again on a fresh port, up to ``START_ATTEMPTS`` times; it is up when its own process
    holds the listening socket."""
    for attempt in range(START_ATTEMPTS):
        port = free_port(host)
        proc = start(port)
        try:
            wait_for_own_port(host, port, proc, timeout=timeout)
            return port, proc
        except PortTaken:
            proc.stop(timeout=3)
            if attempt == START_ATTEMPTS - 1:
                raise
        except BaseException:
            proc.stop(timeout=3)
            raise
    raise AssertionError("unreachable")


def wait_for_port(host: str, port: int, timeout: float = 15.0, proc: ManagedProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with {proc.returncode} before listening on {port}; "
                f"log: {proc.log_tail()}"
            )
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


class ManagedProcess:
    """A child process with its output in a log file; killed when the parent dies."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        run_as: tuple[int, int] | None = None,
    ) -> None:
        """``run_as`` (uid, gid): started as that account (set before the death signal, which a
        process that changed its own user would lose: a broker dropping root would outlive us)."""
        self.name = name
        self.argv = list(argv)
        self._spawn = {"log_dir": log_dir, "env": env, "cwd": cwd, "run_as": run_as}
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_start = self._log.tell()  # the log is appended to: where this run's output begins
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            # its own session: a Ctrl-C at the terminal reaches only the parent, which
            # then stops its children in order; PDEATHSIG still ends them if it dies
            start_new_session=True,
            preexec_fn=_die_with_parent,
            user=run_as[0] if run_as else None,
            group=run_as[1] if run_as else None,
            extra_groups=[] if run_as else None,
        )

    def respawn(self) -> ManagedProcess:
        """The same command started again (this one must have ended), appending to its log."""
        if self.alive():
            raise RuntimeError(f"{self.name} still runs (pid {self.pid})")
        with contextlib.suppress(Exception):
            self._log.close()
        return ManagedProcess(self.name, self.argv, **self._spawn)  # type: ignore[arg-type]

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def kill(self) -> None:
        """kill -9."""
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL. Idempotent."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(Exception):
            self._log.close()
        return self.popen.poll()

    def output(self, n: int = 64_000) -> str:
        """The last ``n`` bytes this process wrote (not the earlier runs' in its log)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(self._log_start, f.seek(0, os.SEEK_END) - n))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-n:].decode(errors="replace")
