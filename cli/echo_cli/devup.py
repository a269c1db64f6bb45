"""``echoctl dev up``: the whole platform on this machine, in the foreground.

Starts the brokers (state under ``.echo/dev/``, kept between runs), the services and the
default fleet of agents as local processes (``devstack``), writes ``.echo/dev.env``,
optionally submits spec files and follows them, then waits until SIGINT/SIGTERM and
stops everything: the platform (agents, then services), then the brokers.

Every child is started by ``ManagedProcess`` and also dies with this process
(``PR_SET_PDEATHSIG``), so even a ``kill -9`` of ``echoctl`` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

from rich.console import Console
from rich.markup import escape

from echo_shared.secretfiles import write_secret

from .client import CliError, EchoClient
from .devstack import Brokers, BrokerSetupError, ManagedProcess, free_port, start_brokers
from .devstack.monitoring import Prometheus, prometheus_binary
from .devstack.platform import DEFAULT_FLEET, REPLICATED, Platform
from .render import print_error, stdout
from .watching import SUCCESS, file_sinks, print_outcome, submit_file, watch_dataflow

HOST = "127.0.0.1"
NAMESPACE = "echo"
POLL = 0.5  # seconds between checks that every child still runs
RESTART_MAX_DELAY = 30.0  # the longest back-off before a child that exited is started again


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Shutdown:
    """SIGINT/SIGTERM set ``event``; while ``raising`` (start-up), they also interrupt the main thread."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.raising = True
        self._old: dict[signal.Signals, Any] = {}

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        first = not self.event.is_set()
        self.event.set()
        if self.raising and first:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Shutdown]:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        try:
            yield self
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_api_port(requested: int, host: str = HOST) -> tuple[int, bool]:
    """``requested`` if free, else a free port; the flag says whether it had to change."""
    if requested and port_is_free(host, requested):
        return requested, False
    return free_port(host), bool(requested)


def env_lines(
    api_url: str,
    brokers: Brokers,
    token: str,
    namespace: str = NAMESPACE,
    prometheus: Prometheus | None = None,
) -> str:
    values = {
        "ECHO_API_URL": api_url,
        "ECHO_TOKEN": token,
        "ECHO_NATS_URL": brokers.nats_url,
        "ECHO_MQTT_URL": brokers.mqtt_url,
        "ECHO_REDIS_URL": brokers.redis_url,
        "ECHO_NAMESPACE": namespace,
    }
    if brokers.bundle is not None:  # the CA that signs the brokers' (and the API's) certificates
        values["ECHO_CA_FILE"] = str(brokers.bundle.ca_file)
    if prometheus is not None:  # queried over HTTPS with this login (the password stays in its file)
        values["ECHO_PROMETHEUS_URL"] = prometheus.url
        values["ECHO_PROMETHEUS_USER"] = prometheus.login[0]
        values["ECHO_PROMETHEUS_PASSWORD_FILE"] = str(prometheus.bundle.prometheus_password_file)
    lines = ["# written by `echoctl dev up`; removed when it stops. Use: source .echo/dev.env"]
    lines += [f"{k}={v}" for k, v in values.items()]
    lines.append("export " + " ".join(values))  # so `source` exports them to echoctl and echo-agent
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def dev_lock(devdir: Path) -> Iterator[None]:
    """One ``dev up`` per directory: the brokers' data under ``.echo/dev`` is not shareable."""
    devdir.mkdir(parents=True, exist_ok=True)
    f: IO[str] = open(devdir / ".lock", "w")  # noqa: SIM115 - closed below
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise CliError(
                f"another `echoctl dev up` runs in {devdir.parent.parent} (see {devdir.parent / 'dev.env'}); "
                "stop it first"
            ) from e
        yield
    finally:
        f.close()


class DevUp:
    def __init__(
        self,
        *,
        root: Path,
        api_port: int,
        submit: list[str],
        console: Console | None = None,
        replicas: int = 1,
        ha: bool = False,
    ) -> None:
        self.root = root
        self.replicas = replicas
        self.ha = ha  # NATS as a 3-node cluster, JetStream replicated 3 times
        self.echo_dir = root / ".echo"
        self.devdir = self.echo_dir / "dev"
        self.env_file = self.echo_dir / "dev.env"
        self.api_port = api_port
        self.submit = submit
        self.con = console or stdout()
        self.shutdown = Shutdown()
        self.brokers: Brokers | None = None
        self.platform: Platform | None = None
        self._reported: set[str] = set()
        self._restarts: dict[str, int] = {}
        self._restart_at: dict[str, float] = {}

    # ----------------------------------------------------------------- lifecycle

    def run(self) -> int:
        for path in self.submit:  # fail before starting anything
            if path != "-" and not Path(path).is_file():
                raise CliError(f"no such file: {path}")
        with dev_lock(self.devdir), self.shutdown.installed():
            code = 0
            try:
                self._start()
                self._submit_all()
                self._wait()
            except Interrupted:
                self.con.print("\n[bold]stopping ECHO…[/]")
            except (BrokerSetupError, RuntimeError, TimeoutError, OSError) as e:
                print_error(f"start-up failed: {e}")
                self.con.print(f"logs: {self.devdir / 'logs'}")
                code = 1
            finally:
                self.shutdown.raising = False
                self._stop()
            return code

    def _start(self) -> None:
        t0 = time.monotonic()
        port, moved = pick_api_port(self.api_port)
        if moved:
            self.con.print(f"[yellow]port {self.api_port} is busy; the API uses port {port} instead[/]")
        self.con.print(f"starting brokers (state in {self._rel(self.devdir)}/)…")
        self.brokers = start_brokers(
            self.devdir, host=HOST, persistent=True, nats_nodes=3 if self.ha else 1, redis_ha=self.ha
        )
        if self.ha:
            self.con.print("NATS: a cluster of 3 nodes; JetStream streams and buckets replicated 3 times")
            self.con.print("Redis: a primary, a replica and 3 sentinels (a failover promotes the replica)")
        self.con.print(f"starting services and {len(DEFAULT_FLEET)} agents…")
        self.platform = Platform(
            self.brokers,
            self.devdir,
            namespace=NAMESPACE,
            api_port=port,
            host=HOST,
            extra_env={"ECHO_JETSTREAM_REPLICAS": "3"} if self.ha else {},
        )
        self.platform.start(DEFAULT_FLEET)
        for name in REPLICATED if self.replicas > 1 else ():
            for i in range(2, self.replicas + 1):
                self.platform.start_replica(name, i)
            how = "sharing requests" if name == "scheduler" else "one leads, the others stand by"
            self.con.print(f"{name}: {self.replicas} replicas ({how})")
        if self.platform.api_port != port:  # bound by another process between the check and the master
            self.con.print(
                f"[yellow]port {port} was taken while ECHO started; the API uses port "
                f"{self.platform.api_port} instead[/]"
            )
        if prometheus_binary() is not None:
            self.platform.start_prometheus()
        else:
            self.con.print(
                "[yellow]Prometheus is not installed (apt-get install prometheus; make does it as root): "
                "the services serve /metrics, nothing keeps them[/]"
            )
        self._banner(time.monotonic() - t0)
        # last: it means "ready"; it holds the admin token, so it is private
        write_secret(
            self.env_file,
            env_lines(
                ",".join(self.platform.api_urls),  # every master replica: echoctl and agents fail over
                self.brokers,
                self.platform.admin_token,
                prometheus=self.platform.prometheus,
            ),
        )

    def _banner(self, took: float) -> None:
        assert self.platform is not None and self.brokers is not None
        b, p = self.brokers, self.platform
        fleet = ", ".join(f"{a.device_id} ({a.tier})" for a in DEFAULT_FLEET)
        self.con.print(f"[bold green]ECHO is up[/] in {took:.1f}s")
        rows = [
            ("API", f"{p.api_url}  (docs: {p.api_url}/docs)"),
            *(("", f"{url}  (another master replica)") for url in p.api_urls[1:]),
            ("console", f"{p.api_url}/ui/  (a login link: source the env file, then `echoctl console`)"),
            ("NATS", b.nats_url),
            ("MQTT", b.mqtt_url),
            ("Redis", b.redis_url),
            ("metrics", f"{p.prometheus.url} (Prometheus; login in .echo/dev.env)" if p.prometheus else "-"),
            ("devices", fleet),
            ("logs", f"{self._rel(p.logs)}/"),
            ("env", f"{self._rel(self.env_file)}  (source it to point echoctl and extra echo-agents here)"),
        ]
        for k, v in rows:
            self.con.print(f"  [bold]{k:<8}[/]{escape(v)}")

    def _stop(self) -> None:
        if self.platform is not None:
            codes = self.platform.stop()
            expected = (0, None, -signal.SIGTERM, -signal.SIGINT)  # we asked them to stop
            bad = {k: v for k, v in codes.items() if v not in expected}
            if bad:
                self.con.print(f"[yellow]exit codes: {bad}[/]")
        if self.brokers is not None:
            self.brokers.stop()
        if self.platform is not None:
            with contextlib.suppress(OSError):
                self.env_file.unlink()
            self.con.print("[bold]ECHO stopped[/]")

    # ----------------------------------------------------------------- submit

    def _submit_all(self) -> None:
        assert self.platform is not None
        with EchoClient(
            self.platform.api_url, token=self.platform.admin_token, ca_file=self._ca_file()
        ) as client:
            for path in self.submit:
                try:
                    self._submit_one(client, path)
                except CliError as e:  # a bad spec does not bring the platform down
                    print_error(e, context=path)

    def _submit_one(self, client: EchoClient, path: str) -> None:
        sinks_before = {}
        df_id, st, body = submit_file(client, path)
        self.con.print(f"submitted {escape(path)}: dataflow [bold]{escape(df_id)}[/] ({st})", soft_wrap=True)
        for s in file_sinks(body, {}, self.root):
            sinks_before[s.path] = s.path.exists()
        df = watch_dataflow(client, df_id, console=self.con)
        print_outcome(df, self.con)
        if df.get("state") not in SUCCESS:
            return
        for s in file_sinks(body, df, self.root):
            on = f" on {s.device}" if s.device else ""
            self.con.print(
                f"output of task {escape(s.task)}{on}: [bold]{escape(self._rel(s.path))}[/]", soft_wrap=True
            )
            if sinks_before.get(s.path):
                self.con.print("  [yellow](the file existed before: the sink appends to it)[/]")

    # ----------------------------------------------------------------- foreground

    def children(self) -> dict[str, ManagedProcess]:
        out: dict[str, ManagedProcess] = {}
        if self.brokers is not None:
            out.update(self.brokers.processes)
        if self.platform is not None:
            out.update(self.platform.services)
            out.update({f"agent-{k}": v for k, v in self.platform.agents.items()})
        return out

    def check_children(self) -> list[str]:
        """Report children that exited (once per exit) and start them again, each after a
        back-off that doubles with its restarts (1 s ... 30 s), as compose's
        ``restart: unless-stopped`` does. Returns the names newly found dead."""
        died = []
        now = time.monotonic()
        for name, proc in self.children().items():
            if proc.alive():
                continue
            if name not in self._reported:
                self._reported.add(name)
                died.append(name)
                n = self._restarts.get(name, 0)
                self._restart_at[name] = now + min(RESTART_MAX_DELAY, 2.0**n)
                print_error(
                    f"{name} exited with code {proc.returncode}; log: {self._rel(proc.log_path)}; "
                    f"restarting in {self._restart_at[name] - now:.0f} s"
                )
            elif now >= self._restart_at.get(name, now):
                try:
                    self.restart(name)
                except Exception as e:  # try again later, with a longer back-off
                    print_error(f"cannot restart {name}: {e}")
                    self._reported.discard(name)
                    self._restarts[name] = self._restarts.get(name, 0) + 1
                    continue
                self._restarts[name] = self._restarts.get(name, 0) + 1
                self._reported.discard(name)
                self.con.print(f"[yellow]restarted {escape(name)}[/] (restart {self._restarts[name]})")
        return died

    def restart(self, name: str) -> None:
        assert self.brokers is not None and self.platform is not None
        if name in self.brokers.processes:
            self.brokers.restart(name)
        elif name in self.platform.services:
            base, _, n = name.rpartition("-")
            if base in REPLICATED and n.isdigit():
                self.platform.start_replica(base, int(n))
            else:
                self.platform.start_service(name)
        elif name.startswith("agent-"):
            spec = next(a for a in DEFAULT_FLEET if a.device_id == name.removeprefix("agent-"))
            self.platform.start_agent(spec)

    def _wait(self) -> None:
        self.con.print("ECHO runs; press Ctrl-C to stop.")
        self.shutdown.raising = False
        while not self.shutdown.event.wait(POLL):
            self.check_children()
        self.con.print("\n[bold]stopping ECHO…[/]")

    def _ca_file(self) -> str | None:
        b = self.brokers.bundle if self.brokers is not None else None
        return str(b.ca_file) if b is not None else None

    def _rel(self, p: Path) -> str:
        try:
            return str(p.relative_to(self.root))
        except ValueError:
            return str(p)


def dev_up(*, api_port: int, submit: list[str], replicas: int = 1, ha: bool = False) -> int:
    return DevUp(root=Path(os.getcwd()), api_port=api_port, submit=submit, replicas=replicas, ha=ha).run()
