"""How external programs (the ``process`` runtime) are confined on a device.

A program a task runs is code of the deployer's choosing, so it gets as little as it needs:

- **an unprivileged user**: ``--run-as USER`` (``ECHO_RUN_AS``), default ``nobody`` when
  the agent runs as root. Its supplementary groups are dropped (``extra_groups=[]``), its
  group is the user's own. An agent that is not root cannot switch users: its programs run
  as the agent's user (said once in the log at start);
- **its own directory**: ``<task data dir>/work``, owned by that user (0700), is its working
  directory (unless the config names ``cwd``), ``HOME`` and ``ECHO_DATA_DIR``. The task data
  directory itself stays the agent's (files arriving on file edges, outputs of file-mode
  runs); a file-mode run gets read access to its input file and, for the run only, write
  access to the directory of its ``{output}``. Paths inside the task data directory are
  handed to the program relative to its working directory, so they work whatever the
  permissions of the directories above it (the agent's data directory may be private);
- **limits** (``setrlimit`` in the child): address space (``RLIMIT_AS``) from the task's
  ``resources.memory_mb``, at least ``MIN_ADDRESS_SPACE_MB`` (address space counts thread
  stacks, allocator arenas and shared libraries that a memory reservation does not; 0: no
  limit), unless the program runs in a cgroup of its own with ``memory.max`` (``cgroups``:
  where the agent can manage cgroups v2, ``limits_cgroup``; ``ECHO_PROCESS_CGROUPS``);
  ``resources.cpu`` by ``cpu.max`` there, else by a watch (``limits``); CPU seconds
  (``RLIMIT_CPU``: ``ECHO_PROCESS_CPU_SECONDS`` per batch or file run, each a fresh
  process; ``ECHO_PROCESS_LINES_CPU_SECONDS`` for a lines-mode program, which lives as long
  as its task, so by default it has none; 0: none; SIGXCPU at the limit, SIGKILL
  ``CPU_GRACE`` seconds later); open files (``RLIMIT_NOFILE``, ``ECHO_PROCESS_MAX_FILES``,
  1024); no core dumps (``RLIMIT_CORE`` 0);
- **a minimal environment**, never the agent's (no broker URLs, no credentials, no token
  files): ``PATH`` (``SAFE_PATH``), ``HOME``, ``LANG``/``LC_ALL`` (``C.UTF-8``),
  ``ECHO_DATAFLOW``, ``ECHO_TASK``, ``ECHO_DEVICE``, ``ECHO_DATA_DIR``, then the config's
  ``env`` (which may override any of them);
- its own session and process group, killed as a whole (with the descendants seen that
  left it; ``process_runtime``) when a run ends or the task stops; ``umask`` 077.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import resource
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .limits_cgroup import CGROUP_ROOT, CgroupTree

log = logging.getLogger(__name__)

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
DEFAULT_USER = "nobody"
MIN_ADDRESS_SPACE_MB = 256
CPU_GRACE = 5  # seconds between SIGXCPU (soft limit) and SIGKILL (hard limit)
DEFAULT_CPU_SECONDS = 600
DEFAULT_MAX_FILES = 1024
WORK_DIR = "work"  # under the task's data directory: the program's own


def minimal_environment(home: Path | str, path: str = SAFE_PATH) -> dict[str, str]:
    """What any child of the agent starts from (programs, user-operator workers): a search
    path, a home and a locale, never the agent's own variables."""
    return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


class UnknownUser(ValueError):
    """``--run-as`` names no user of this machine."""


@dataclass(frozen=True)
class Account:
    """A user that programs run as."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, user: str) -> Account:
        """By name or numeric uid."""
        try:
            pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise UnknownUser(f"no user {user!r} on this machine") from None
        return cls(pw.pw_name, pw.pw_uid, pw.pw_gid)

    @classmethod
    def current(cls) -> Account:
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(name, uid, os.getegid())


@dataclass(frozen=True)
class Limits:
    """Resource limits of one program: (resource, (soft, hard)) pairs for ``setrlimit``."""

    pairs: tuple[tuple[int, tuple[int, int]], ...]

    def apply(self) -> None:
        """In the child, before exec (only calls into libc)."""
        for res, pair in self.pairs:
            resource.setrlimit(res, pair)


@dataclass(frozen=True)
class Sandbox:
    """The confinement of a device's external programs (see the module doc).

    ``account``: who programs run as; None: the agent's own user (it is not root)."""

    account: Account | None
    cpu_seconds: int = DEFAULT_CPU_SECONDS
    lines_cpu_seconds: int = 0
    max_files: int = DEFAULT_MAX_FILES
    cpu_window: float = 10.0  # seconds resources.cpu is averaged over (``limits``)
    cgroups: CgroupTree | None = None  # where programs get a cgroup each (None: rlimits)
    path: str = SAFE_PATH
    agent: Account = field(default_factory=Account.current)

    @classmethod
    def for_agent(
        cls,
        run_as: str | None = None,
        *,
        cpu_seconds: int = DEFAULT_CPU_SECONDS,
        lines_cpu_seconds: int = 0,
        max_files: int = DEFAULT_MAX_FILES,
        cpu_window: float = 10.0,
        cgroups: bool = False,
        cgroup_root: Path = CGROUP_ROOT,
        euid: int | None = None,
        quiet: bool = False,
    ) -> Sandbox:
        """The sandbox of this agent: ``run_as`` (default ``nobody``) when it is root, else
        its own user; with ``cgroups``, a cgroup per program where this device allows
        (``CgroupTree.detect``, which may move the agent into a leaf cgroup). Logs who
        programs run as and how their resources are enforced, unless ``quiet``."""
        agent = Account.current()
        euid = os.geteuid() if euid is None else euid
        account: Account | None
        if euid != 0:
            account = None
            if not quiet:
                if run_as is not None and run_as not in (agent.name, str(agent.uid)):
                    log.warning(
                        "external programs run as %s, not %s: an agent that is not root cannot switch users",
                        agent.name,
                        run_as,
                    )
                else:
                    log.info(
                        "external programs run as the agent's user %s (it is not root, so it cannot "
                        "switch users)",
                        agent.name,
                    )
        else:
            account = Account.lookup(run_as or DEFAULT_USER)
            if not quiet:
                if account.uid == 0:
                    log.warning("external programs run as root (--run-as %s): they are not confined", run_as)
                else:
                    log.info("external programs run as %s (uid %d)", account.name, account.uid)
        tree = None
        if cgroups:
            tree, why = CgroupTree.detect(cgroup_root)
            if not quiet:
                if tree is not None:
                    log.info("process tasks' resources are enforced by cgroups v2 under %s", tree.base)
                else:
                    log.info(
                        "process tasks' resources are enforced by rlimits and a CPU watch (not cgroups "
                        "v2: %s)",
                        why,
                    )
        return cls(account, cpu_seconds, lines_cpu_seconds, max_files, cpu_window, tree, agent=agent)

    @classmethod
    def default(cls) -> Sandbox:
        """The defaults (what an operator built outside an agent's policy gets)."""
        return cls.for_agent(quiet=True)

    @property
    def user(self) -> str:
        """Who programs run as, for messages."""
        return (self.account or self.agent).name

    @property
    def switches(self) -> bool:
        """Programs run as another user than the agent's."""
        return self.account is not None and self.account.uid != self.agent.uid

    def popen_args(self) -> dict[str, object]:
        """``user``/``group``/``extra_groups`` for ``subprocess`` (empty: no switch)."""
        if self.account is None or not self.switches:
            return {}
        return {"user": self.account.uid, "group": self.account.gid, "extra_groups": []}

    def environment(self, *, home: Path, echo: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
        """The program's whole environment: nothing of the agent's."""
        return {**minimal_environment(home, self.path), **echo, **extra}

    def limits(self, *, memory_mb: int | None, lines: bool, address_space: bool = True) -> Limits:
        """The limits of one program (``lines``: the task's long-running program;
        ``address_space``: limit it from ``memory_mb``, which a cgroup does otherwise)."""
        pairs: list[tuple[int, tuple[int, int]]] = []
        if memory_mb and address_space:
            size = max(memory_mb, MIN_ADDRESS_SPACE_MB) * 1024 * 1024
            pairs.append((resource.RLIMIT_AS, (size, size)))
        cpu = self.lines_cpu_seconds if lines else self.cpu_seconds
        if cpu:
            pairs.append((resource.RLIMIT_CPU, (cpu, cpu + CPU_GRACE)))
        pairs.append((resource.RLIMIT_NOFILE, (self.max_files, self.max_files)))
        pairs.append((resource.RLIMIT_CORE, (0, 0)))
        # never above what the agent itself may have: the child could not raise them
        capped = []
        for res, (soft, hard) in pairs:
            _, cur_hard = resource.getrlimit(res)
            if cur_hard != resource.RLIM_INFINITY:
                soft, hard = min(soft, cur_hard), min(hard, cur_hard)
            capped.append((res, (soft, hard)))
        return Limits(tuple(capped))

    # ------------------------------------------------------------------ files

    def give(self, path: Path, mode: int | None = None) -> None:
        """Make ``path`` (a file or directory the agent created in a directory of its own, so
        never a link) the program user's. Blocking: call it in a thread."""
        if self.account is not None and self.switches:
            os.chown(path, self.account.uid, self.account.gid, follow_symlinks=False)
        if mode is not None:
            os.chmod(path, mode)

    def take_back(self, path: Path) -> None:
        """Make a directory lent with ``give`` the agent's again (the program cannot change
        what is in it any more). Blocking."""
        if self.account is not None and self.switches:
            with contextlib.suppress(FileNotFoundError):
                os.chown(path, self.agent.uid, self.agent.gid, follow_symlinks=False)

    def work_dir(self, task_dir: Path) -> Path:
        """``<task dir>/work``, created and given to the program's user (0700). Blocking."""
        task_dir.mkdir(parents=True, exist_ok=True)
        work = task_dir / WORK_DIR
        work.mkdir(exist_ok=True)
        if work.is_symlink() or not work.is_dir():
            raise NotADirectoryError(f"{work} is not a directory")
        self.give(work, 0o700)
        return work

    def why_not_executable(self, program: str) -> str:
        """Why the program's user cannot run ``program``: the first directory it cannot
        search or the file it cannot execute (from the mode bits), or ``""``."""
        who = self.account or self.agent
        for path in dict.fromkeys([Path(program), Path(os.path.realpath(program))]):
            for p in [*reversed(path.parents), path]:
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                if who.uid == 0:
                    continue
                bits = (
                    (st.st_mode >> 6) & 7
                    if st.st_uid == who.uid
                    else (st.st_mode >> 3) & 7
                    if st.st_gid == who.gid
                    else st.st_mode & 7
                )
                if not bits & 1:
                    kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
                    return f"{kind} {p} is not {'searchable' if kind == 'directory' else 'executable'} by it"
        return ""
