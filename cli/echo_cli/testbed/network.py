"""The testbed's network: one bridge, one namespace and veth pair per isolated device, tbf.

::

    root namespace                                   namespace echo-tb-<tag>-edge-1
    brokers, services on 127.0.0.1                   ┌──────────────────────────────┐
    delay proxy on 10.77.N.1:<port per route> ──┐    │ agent edge-1                 │
                                  bridge etb<tag>br ─┤ veth etb<tag>h0 ═ etb<tag>d0   │
                                  (10.77.N.1/24)  │  │ 10.77.N.10/24, tbf both ways │
                                                  └… └──────────────────────────────┘

- The brokers listen on the root namespace's loopback, which no other namespace can
  reach: a device in a namespace reaches them only through its routes of the delay proxy,
  which listen on the bridge address. (Namespaces have no default route either.)
- Bandwidth: ``tc tbf`` on both ends of the device's veth (the namespace end shapes its
  uplink, the bridge end its downlink), when the kernel permits; otherwise the testbed
  runs unshaped and says so (``Network.shaping``).
- Latency: not ``netem`` (missing from many kernels, this one included) but the delay
  proxy (``delay_proxy.py``).
- Every testbed gets a random 4-hex ``tag`` in all its names and a free ``10.77.N.0/24``
  (N chosen under a lock), so several testbeds (tests run concurrently) never collide.
  What it created is recorded in ``STATE_DIR/<tag>.json`` with the owner's pid; ``down()``
  removes it all, and ``sweep_stale()`` removes what a testbed killed with -9 left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

STATE_DIR = Path("/run/echo-testbed")
SUBNET_BASE = "10.77"  # testbeds use 10.77.N.0/24
# the name devices in a namespace dial the brokers and the API by (the delay proxy on the
# bridge): the brokers' certificate is valid for it, and each namespace's /etc/hosts
# (``ip netns exec`` mounts /etc/netns/NAME/hosts) points it at the bridge address
TESTBED_HOST = "echo-testbed"
NETNS_ETC = Path("/etc/netns")
FIRST_DEVICE_HOST = 10
CMD_TIMEOUT = 20.0


class NetworkError(RuntimeError):
    """A step of the network set-up failed (the message names the command and its error)."""


@dataclass(frozen=True)
class DeviceLink:
    """What the network needs to know about one isolated device."""

    device_id: str
    mbps: float | None = None


@dataclass
class Attached:
    """A device's namespace and veth pair, as created."""

    device_id: str
    netns: str
    host_if: str
    dev_if: str
    address: str
    shaped: bool = False


def ip_binary() -> str:
    found = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip") if os.path.exists(p)), None)
    if not found:
        raise NetworkError("the `ip` command (iproute2) is not installed")
    return found


def _tc() -> str | None:
    return shutil.which("tc") or next((p for p in ("/usr/sbin/tc", "/sbin/tc") if os.path.exists(p)), None)


def run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetworkError(f"`{' '.join(argv)}` could not run: {e}") from e
    if check and res.returncode != 0:
        raise NetworkError(
            f"`{' '.join(argv)}` failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}"
        )
    return res


def unavailable_reason() -> str | None:
    """Why this machine cannot run a testbed (not root, no iproute2, netns refused), or None."""
    if os.geteuid() != 0:
        return "the testbed needs root (network namespaces, veth pairs, tc)"
    try:
        ip = ip_binary()
    except NetworkError as e:
        return str(e)
    probe = f"echo-tb-probe-{os.getpid()}-{secrets.token_hex(2)}"
    res = run([ip, "netns", "add", probe], check=False)
    if res.returncode != 0:
        return f"network namespaces are not permitted here: `ip netns add` said {res.stderr.strip()!r}"
    run([ip, "netns", "delete", probe], check=False)
    return None


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _subnets_in_use() -> set[int]:
    """Third octets of the 10.77.N.0/24 subnets this machine already has addresses in."""
    res = run([ip_binary(), "-4", "-o", "addr", "show"], check=False)
    used: set[int] = set()
    for line in res.stdout.splitlines():
        for word in line.split():
            if word.startswith(SUBNET_BASE + "."):
                with contextlib.suppress(ValueError, IndexError):
                    used.add(int(word.split("/")[0].split(".")[2]))
    for path in STATE_DIR.glob("*.json"):  # reserved by a testbed still setting up
        with contextlib.suppress(OSError, ValueError, KeyError):
            used.add(int(json.loads(path.read_text())["subnet"]))
    return used


def _process_alive(pid: int, started: float) -> bool:
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - started) < 1.0 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class Network:
    """The bridge and per-device namespaces of one testbed. ``up()`` then ``down()`` (idempotent)."""

    devices: Sequence[DeviceLink]
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    subnet: int = -1
    shaping: bool = True  # tbf applied to every device with a bandwidth
    shaping_problem: str = ""
    attached: dict[str, Attached] = field(default_factory=dict)
    _namespaces: list[str] = field(default_factory=list)
    _links: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"etb{self.tag}br"

    @property
    def host_address(self) -> str:
        """The root namespace's address on the bridge (where the delay proxy listens)."""
        return f"{SUBNET_BASE}.{self.subnet}.1"

    @property
    def state_file(self) -> Path:
        return STATE_DIR / f"{self.tag}.json"

    def netns_of(self, device_id: str) -> str:
        return f"echo-tb-{self.tag}-{device_id}"

    # -------------------------------------------------------------------- set up

    def up(self) -> None:
        if len(self.devices) > 255 - FIRST_DEVICE_HOST:
            raise NetworkError(f"at most {255 - FIRST_DEVICE_HOST} isolated devices per testbed")
        ip = ip_binary()
        with _state_lock():
            while self.state_file.exists() or _exists("link", self.bridge):  # another testbed's tag
                self.tag = secrets.token_hex(2)
            used = _subnets_in_use()
            free = [n for n in range(256) if n not in used]
            if not free:
                raise NetworkError(f"every {SUBNET_BASE}.N.0/24 subnet is in use on this machine")
            self.subnet = free[0]
            self._save()
            try:
                self._links.append(self.bridge)
                self._save()
                run([ip, "link", "add", self.bridge, "type", "bridge"])
                run([ip, "addr", "add", f"{self.host_address}/24", "dev", self.bridge])
                run([ip, "link", "set", self.bridge, "up"])
            except BaseException:
                self.down()
                raise
        try:
            for i, dev in enumerate(self.devices):
                self._attach(ip, i, dev)
        except BaseException:
            self.down()
            raise

    def _attach(self, ip: str, i: int, dev: DeviceLink) -> None:
        ns = self.netns_of(dev.device_id)
        host_if, dev_if = f"etb{self.tag}h{i}", f"etb{self.tag}d{i}"
        address = f"{SUBNET_BASE}.{self.subnet}.{FIRST_DEVICE_HOST + i}"
        self._namespaces.append(ns)
        self._links.append(host_if)
        self._save()  # recorded before creation: a crash in between still gets cleaned up
        run([ip, "netns", "add", ns])
        etc = NETNS_ETC / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{self.host_address} {TESTBED_HOST}\n")
        run([ip, "link", "add", host_if, "type", "veth", "peer", "name", dev_if, "netns", ns])
        run([ip, "link", "set", host_if, "master", self.bridge])
        run([ip, "link", "set", host_if, "up"])
        run([ip, "-n", ns, "addr", "add", f"{address}/24", "dev", dev_if])
        run([ip, "-n", ns, "link", "set", dev_if, "up"])
        run([ip, "-n", ns, "link", "set", "lo", "up"])
        att = Attached(dev.device_id, ns, host_if, dev_if, address)
        if dev.mbps is not None:
            att.shaped = self._shape(ns, host_if, dev_if, dev.mbps)
        self.attached[dev.device_id] = att

    def _shape(self, ns: str, host_if: str, dev_if: str, mbps: float) -> bool:
        """tbf at ``mbps`` on both ends of the veth; False (and ``shaping_problem``) if refused."""
        tc = _tc()
        if tc is None:
            self.shaping, self.shaping_problem = False, "tc (iproute2) is not installed"
            return False
        rate_bytes = mbps * 1e6 / 8
        # a burst of >= 64 KiB lets a GSO super-packet through; the queue holds ~100 ms at the rate
        burst = max(64 * 1024, int(rate_bytes / 100))
        limit = max(2 * burst, int(rate_bytes / 10))
        tbf = ["root", "tbf", "rate", f"{mbps:g}mbit", "burst", str(burst), "limit", str(limit)]
        for argv in (
            [tc, "qdisc", "replace", "dev", host_if, *tbf],
            [tc, "-n", ns, "qdisc", "replace", "dev", dev_if, *tbf],
        ):
            res = run(argv, check=False)
            if res.returncode != 0:
                self.shaping = False
                self.shaping_problem = f"`{' '.join(argv)}` failed: {res.stderr.strip()}"
                return False
        return True

    # -------------------------------------------------------------------- faults

    def partition(self, device_id: str, cut: bool = True) -> None:
        """Cut a device off the network (its veth's bridge end down: packets go nowhere, no
        connection is reset, as when a cable or radio link drops), or heal it (``cut=False``)."""
        att = self.attached.get(device_id)
        if att is None:
            raise NetworkError(f"{device_id} is not an isolated device of this testbed")
        run([ip_binary(), "link", "set", att.host_if, "down" if cut else "up"])

    # -------------------------------------------------------------------- tear down

    def down(self) -> list[str]:
        """Remove every namespace, veth (with its qdiscs) and the bridge; returns what failed."""
        problems = _remove(self._namespaces, self._links)
        self._namespaces.clear()
        self._links.clear()
        self.attached.clear()
        if not problems:
            with contextlib.suppress(OSError):
                self.state_file.unlink()
        return problems

    def _save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        me = psutil.Process()
        state = {
            "tag": self.tag,
            "subnet": self.subnet,
            "pid": me.pid,
            "started": me.create_time(),
            "namespaces": self._namespaces,
            "links": self._links,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)

    def __enter__(self) -> Network:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def _exists(kind: str, name: str) -> bool:
    if kind == "netns":
        return Path("/run/netns", name).exists()
    return Path("/sys/class/net", name).exists()


def _remove(namespaces: Sequence[str], links: Sequence[str]) -> list[str]:
    """Delete the namespaces (their veth ends and qdiscs go with them), then the links."""
    ip = ip_binary()
    problems: list[str] = []
    for ns in namespaces:
        if _exists("netns", ns):
            res = run([ip, "netns", "delete", ns], check=False)
            if res.returncode != 0:
                problems.append(f"netns {ns}: {res.stderr.strip()}")
        shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
    for link in reversed(links):  # host veth ends first (gone with their peer already), the bridge last
        if _exists("link", link):
            res = run([ip, "link", "delete", link], check=False)
            if res.returncode != 0 and _exists("link", link):
                problems.append(f"link {link}: {res.stderr.strip()}")
    return problems


def sweep_stale() -> list[str]:
    """Remove what testbeds whose process is gone left behind; returns their tags."""
    if not STATE_DIR.is_dir():
        return []
    swept = []
    with _state_lock():
        for path in sorted(STATE_DIR.glob("*.json")):
            try:
                st = json.loads(path.read_text())
                pid, started = int(st["pid"]), float(st["started"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if _process_alive(pid, started):
                continue
            if not _remove(list(st.get("namespaces", [])), list(st.get("links", []))):
                path.unlink(missing_ok=True)
                swept.append(str(st.get("tag", path.stem)))
    return swept


def net_namespace_inode(pid: int) -> int | None:
    """The network namespace of process ``pid`` (inode of /proc/PID/ns/net), None if unknown."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def named_namespace_inode(netns: str) -> int | None:
    try:
        return os.stat(Path("/run/netns", netns)).st_ino
    except OSError:
        return None
