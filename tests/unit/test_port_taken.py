"""Telling a server that lost its port to another process from one that failed otherwise:
what each server we start prints when its port is taken, and only this run's output counts."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from echo_cli.devstack import processes
from echo_cli.devstack.processes import (
    ManagedProcess,
    PortTaken,
    listens,
    start_on_free_port,
    taken_port,
    wait_for_own_port,
    wait_for_own_ports,
)

# what each server wrote, its port taken (nats-server 2.10, Redis 7, Mosquitto 2, Prometheus,
# uvicorn and echo_shared.metrics in a service's log)
NATS = (
    "[1] [FTL] Error listening on port: 127.0.0.1:43653, "
    '"listen tcp 127.0.0.1:43653: bind: address already in use"'
)
REDIS = (
    "11403:M 05 Dec 2026 # Warning: Could not create server TCP listening socket 127.0.0.1:43653: "
    "bind: Address already in use\n11403:M # Failed listening on port 43653 (TCP), aborting."
)
MOSQUITTO = "1796455780: Error: Address already in use"
PROMETHEUS = 'ts=... level=error err="listen tcp 127.0.0.1:43653: bind: address already in use"'
UVICORN = (
    "ERROR [Errno 98] error while attempting to bind on address ('127.0.0.1', 43653): address already in use"
)
METRICS = (
    "Traceback (most recent call last):\n  ...\nOSError: [Errno 98] Address already in use\n\n"
    "The above exception was the direct cause of the following exception:\n\n"
    "echo_shared.metrics.MetricsError: cannot serve metrics on 127.0.0.1:43654: "
    "[Errno 98] Address already in use"
)


@pytest.mark.parametrize("output", [NATS, REDIS, MOSQUITTO, PROMETHEUS, UVICORN])
def test_a_server_with_one_port_says_it_was_taken(output: str) -> None:
    assert taken_port("starting\n" + output + "\nexiting", [43653]) == 43653


def test_of_several_ports_the_one_named_is_the_taken_one() -> None:
    assert taken_port(UVICORN, [43653, 43654]) == 43653
    assert taken_port(METRICS, [43653, 43654]) == 43654
    assert taken_port(METRICS, [4365, 436540]) is None  # a number that contains the port is not it
    assert taken_port("Error: Address already in use", [43653, 43654]) is None  # which one: unknown


def test_other_failures_are_not_a_taken_port() -> None:
    assert taken_port("permission denied opening the key\nexiting", [43653]) is None
    assert taken_port("", [43653]) is None


def test_an_earlier_runs_message_in_the_log_does_not_count(tmp_path: Path) -> None:
    """The log is appended across runs: a failure of this run is reported as what it is."""
    (tmp_path / "srv.log").write_text("srv: Error: Address already in use\n")
    argv = [sys.executable, "-c", "print('bad config'); raise SystemExit(3)"]
    proc = ManagedProcess("srv", argv, log_dir=tmp_path)
    try:
        with pytest.raises(RuntimeError, match="bad config") as e:
            wait_for_own_port("127.0.0.1", 1, proc, timeout=10)
        assert not isinstance(e.value, PortTaken)
        assert "Address already in use" not in proc.output()
        assert "Address already in use" in proc.log_tail()  # the whole log keeps it
    finally:
        proc.stop()


def listener(port: int, logs: Path) -> ManagedProcess:
    return ManagedProcess("listener", [sys.executable, "-c", LISTENER, str(port)], log_dir=logs)


LISTENER = """
import signal, socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as e:
    print(f"cannot listen on 127.0.0.1:{sys.argv[1]}: {e}", flush=True)
    raise SystemExit(1)
s.listen()
print("listening", flush=True)
signal.pause()  # until stopped
"""


def test_a_server_is_started_again_on_another_port_when_its_port_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process binds the chosen port before the server does: the server exits, is
    started again on a fresh port, and counts as up only once its own pid holds that port."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real = processes.free_port
    given: list[int] = []

    def taken_first(host: str = "127.0.0.1") -> int:
        given.append(taken if not given else real(host))
        return given[-1]

    monkeypatch.setattr(processes, "free_port", taken_first)
    started: list[ManagedProcess] = []

    def start(port: int) -> ManagedProcess:
        started.append(listener(port, tmp_path))
        return started[-1]

    try:
        port, proc = start_on_free_port("127.0.0.1", start, timeout=20)
        assert given[0] == taken and port == given[1] != taken
        assert len(started) == 2 and not started[0].alive() and proc is started[1] and proc.alive()
        assert listens(proc.pid, port) and not listens(proc.pid, taken)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        for p in started:
            p.stop()
        squatter.close()


def test_waiting_for_several_ports_names_the_missing_one(tmp_path: Path) -> None:
    port, proc = start_on_free_port("127.0.0.1", lambda port: listener(port, tmp_path), timeout=20)
    other = port + 1 if port < 65535 else port - 1
    try:
        with pytest.raises(TimeoutError, match=f":{other} "):
            wait_for_own_ports("127.0.0.1", [port, other], proc, timeout=2)
        assert proc.alive() and listens(proc.pid, port)
    finally:
        proc.stop()
