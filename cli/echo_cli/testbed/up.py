"""``echoctl testbed up`` (``make testbed``): an emulated edge/fog/cloud fleet, in the foreground.

Like ``echoctl dev up`` (whose foreground loop, submissions and signal handling it
reuses), but the agents of ``fleet.DEFAULT_TESTBED`` (or ``--fleet FILE``) run behind
emulated network paths (``runner.Testbed``). Brokers start fresh under
``.echo/testbed/`` (no state kept between runs); ``.echo/testbed.env`` is written once
everything is up and removed at the end. Ctrl-C or SIGTERM stops the agents, services,
proxy and brokers and removes every namespace, veth pair, qdisc and the bridge. If this
process is killed with -9, its children die with it (``PR_SET_PDEATHSIG``) and the next
``testbed up`` (or ``echoctl testbed clean``) removes the network it left.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.markup import escape

from echo_shared.secretfiles import write_secret

from ..client import CliError
from ..devstack import Brokers, BrokerSetupError, ManagedProcess, start_brokers
from ..devup import DevUp, Interrupted, pick_api_port
from ..devup import env_lines as dev_env_lines
from ..render import print_error
from .fleet import DEFAULT_TESTBED, FleetError, TestbedDevice, load_fleet
from .network import TESTBED_HOST, sweep_stale, unavailable_reason
from .runner import Testbed

NAMESPACE = "echo"


def env_lines(
    api_url: str, brokers: Brokers, testbed: Testbed, token: str, namespace: str = NAMESPACE
) -> str:
    lines = dev_env_lines(api_url, brokers, token, namespace).splitlines()
    lines[0] = "# written by `echoctl testbed up`; removed when it stops. Use: source .echo/testbed.env"
    for row in testbed.describe():
        if row.netns:
            lines.append(
                f"# {row.device}: {row.path()}; ip netns exec {row.netns} ... (address {row.address})"
            )
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def testbed_lock(workdir: Path) -> Iterator[None]:
    """One ``testbed up`` per directory (its state lives under ``.echo/testbed``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    f: IO[str] = open(workdir / ".lock", "w")  # noqa: SIM115 - closed below
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise CliError(
                f"another `echoctl testbed up` runs in {workdir.parent.parent}; stop it first"
            ) from e
        yield
    finally:
        f.close()


class TestbedUp(DevUp):
    __test__ = False

    def __init__(
        self,
        *,
        root: Path,
        api_port: int,
        submit: list[str],
        fleet: tuple[TestbedDevice, ...] = DEFAULT_TESTBED,
        console: Console | None = None,
    ) -> None:
        super().__init__(root=root, api_port=api_port, submit=submit, console=console)
        self.devdir = self.echo_dir / "testbed"
        self.env_file = self.echo_dir / "testbed.env"
        self.fleet = fleet
        self.testbed: Testbed | None = None

    def run(self) -> int:
        for path in self.submit:
            if path != "-" and not Path(path).is_file():
                raise CliError(f"no such file: {path}")
        reason = unavailable_reason() if any(d.isolated for d in self.fleet) else None
        if reason:
            raise CliError(f"cannot start the testbed: {reason}")
        with testbed_lock(self.devdir), self.shutdown.installed():
            code = 0
            try:
                self._start()
                self._submit_all()
                self._wait()
            except Interrupted:
                self.con.print("\n[bold]stopping the testbed…[/]")
            except (BrokerSetupError, RuntimeError, TimeoutError, OSError) as e:
                print_error(f"start-up failed: {e}")
                self.con.print(f"logs: {self._rel(self.devdir / 'logs')}")
                code = 1
            finally:
                self.shutdown.raising = False
                code = self._stop_testbed() or code
            return code

    def _start(self) -> None:
        t0 = time.monotonic()
        port, moved = pick_api_port(self.api_port)
        if moved:
            self.con.print(f"[yellow]port {self.api_port} is busy; the API uses port {port} instead[/]")
        swept = sweep_stale()
        if swept:
            self.con.print(f"removed the network of earlier testbeds that did not stop: {', '.join(swept)}")
        self.con.print(f"starting brokers (logs in {self._rel(self.devdir)}/)…")
        self.brokers = start_brokers(self.devdir / "brokers", hosts=(TESTBED_HOST,))
        self.con.print(f"starting the network, services and {len(self.fleet)} agents…")
        self.testbed = Testbed(self.brokers, self.devdir, self.fleet, namespace=NAMESPACE, api_port=port)
        self.testbed.start()
        self.platform = self.testbed.platform
        self._banner(time.monotonic() - t0)
        assert self.platform is not None
        # it holds the admin token: private
        write_secret(
            self.env_file,
            env_lines(self.platform.api_url, self.brokers, self.testbed, self.platform.admin_token),
        )

    def _banner(self, took: float) -> None:
        assert self.platform is not None and self.brokers is not None and self.testbed is not None
        b, p, tb = self.brokers, self.platform, self.testbed
        self.con.print(f"[bold green]ECHO testbed is up[/] in {took:.1f}s")
        rows = [
            ("API", f"{p.api_url}  (docs: {p.api_url}/docs)"),
            ("NATS", b.nats_url),
            ("MQTT", b.mqtt_url),
            ("Redis", b.redis_url),
            ("logs", f"{self._rel(p.logs)}/"),
            ("env", f"{self._rel(self.env_file)}  (source it to point echoctl here)"),
        ]
        for k, v in rows:
            self.con.print(f"  [bold]{k:<8}[/]{escape(v)}")
        self.con.print("  [bold]devices[/]")
        for row in tb.describe():
            where = f"netns {row.netns} ({row.address})" if row.netns else "root namespace"
            brokers = ", ".join(f"{k} {v}" for k, v in row.brokers.items())
            self.con.print(
                f"    {row.device:<9} {row.tier:<6} {where}; {row.path()}; {brokers}", markup=False
            )
        if tb.network is not None and not tb.network.shaping:
            self.con.print(f"  [yellow]bandwidth not shaped: {escape(tb.network.shaping_problem)}[/]")

    def _stop_testbed(self) -> int:
        code = 0
        if self.testbed is not None:
            codes = self.testbed.stop()
            bad = {k: v for k, v in codes.items() if v not in (0, None, -15, -2)}
            if bad:
                self.con.print(f"[yellow]exit codes: {bad}[/]")
            if self.testbed.cleanup_problems:
                print_error("could not remove: " + "; ".join(self.testbed.cleanup_problems))
                code = 1
        if self.brokers is not None:
            self.brokers.stop()
        if self.testbed is not None:
            with contextlib.suppress(OSError):
                self.env_file.unlink()
            self.con.print(
                "[bold]ECHO testbed stopped[/] (namespaces, veth pairs, qdiscs and bridge removed)"
            )
        return code

    def children(self) -> dict[str, ManagedProcess]:
        out: dict[str, ManagedProcess] = {}
        if self.brokers is not None:
            out.update(self.brokers.processes)
        if self.testbed is not None:
            out.update(self.testbed.children())
        return out


def testbed_up(*, api_port: int, submit: list[str], fleet_file: str | None) -> int:
    try:
        fleet = load_fleet(Path(fleet_file)) if fleet_file else DEFAULT_TESTBED
    except FleetError as e:
        raise CliError(str(e)) from e
    return TestbedUp(root=Path(os.getcwd()), api_port=api_port, submit=submit, fleet=fleet).run()


def testbed_clean() -> list[str]:
    """Remove the networks of testbeds whose process is gone."""
    reason = unavailable_reason()
    if reason:
        raise CliError(f"cannot clean up testbeds: {reason}")
    return sweep_stale()
