"""Redis with Sentinel on this machine: a primary, a replica and three sentinels.

What ``echoctl dev up --ha`` (and the chaos tests) run for a Redis that survives the loss of
its primary: the sentinels agree (2 of 3) that the primary is down after
``DOWN_AFTER_MS``, promote the replica, and the services' clients (``redis+sentinel://``
URLs, ``echo_shared.redis_store``) follow them to it. A primary that comes back is made a
replica of the new one by the sentinels.

Secured like the single Redis: TLS only, ``default`` off, the bundle's ACL users; the
replica logs in to its primary as ``echo-replication``, the sentinels to every Redis and
to each other as ``echo-sentinel``; a service's login may ask a sentinel where the primary
is, nothing more. Passwords are in 0600 configuration files, never on a command line.
Replication is asynchronous (Redis' own): a write acknowledged by the primary in the last
moment before it dies can be missing on the promoted replica (docs/reliability.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from echo_shared.brokerauth import REDIS_SENTINEL_USER
from echo_shared.bundle import Bundle
from echo_shared.ha_configs import PRIMARY_NAME, TlsFiles, redis_replication_conf, sentinel_conf
from echo_shared.secretfiles import write_secret

from .processes import ManagedProcess, start_on_free_port

SENTINELS = 3


def redis_security(port: int, bundle: Bundle, *, tls: bool = True) -> list[str]:
    """redis-server arguments: TLS only on ``port``, clients verified by their login
    (``tls=False``: the benchmark of what TLS costs: plaintext, the same logins)."""
    if not tls:
        return ["--port", str(port), "--aclfile", str(bundle.redis_acl_file)]
    return [
        "--port", "0",
        "--tls-port", str(port),
        "--tls-cert-file", str(bundle.server.cert),
        "--tls-key-file", str(bundle.server.key),
        "--tls-ca-cert-file", str(bundle.ca_file),
        "--tls-auth-clients", "no",
        "--aclfile", str(bundle.redis_acl_file),
    ]  # fmt: skip


def redis_server_argv(
    binary: str,
    port: int,
    bundle: Bundle,
    *,
    host: str,
    data: Path,
    persistent: bool,
    tls: bool = True,
    config: Path | None = None,
    replica_of: tuple[str, int] | None = None,
) -> list[str]:
    """The command line of a redis-server on this machine (the single Redis and each node of
    ``start_redis_ha``): ``redis_security``, listening on ``host``, its files in ``data``, no
    snapshots, the append-only file when ``persistent``. ``config``: a configuration file
    read first (the command line's options win); ``replica_of``: its primary's address."""
    argv = [binary, *([str(config)] if config is not None else []), *redis_security(port, bundle, tls=tls)]
    argv += ["--bind", host, "--dir", str(data), "--save", "", "--appendonly", "yes" if persistent else "no"]
    if replica_of is not None:
        argv += ["--replicaof", replica_of[0], str(replica_of[1])]
    return argv


def sentinel_client(host: str, port: int, bundle: Bundle) -> redis.Redis:
    """A client logged in as the sentinels' own login (``echo-sentinel``), to a sentinel
    (every command) or to a Redis (the few Sentinel needs there, ``ROLE`` among them; no
    data). Replies decoded; use it in a ``with`` block (closed at its end)."""
    return redis.Redis(
        host=host,
        port=port,
        username=REDIS_SENTINEL_USER,
        password=bundle.redis_internal()["sentinel"],
        ssl=True,
        ssl_ca_certs=str(bundle.ca_file),
        socket_timeout=2,
        decode_responses=True,
    )


def node_address(url: str) -> tuple[str, int]:
    """``(host, port)`` of a node's ``rediss://host:port`` (``start_redis_ha``'s nodes)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


def start_redis_ha(
    workdir: Path,
    logs: Path,
    host: str,
    persistent: bool,
    procs: dict[str, ManagedProcess],
    bundle: Bundle,
    binary: str,
) -> tuple[str, dict[str, str]]:
    """Start the primary (``redis``), its replica (``redis-2``) and the sentinels
    (``sentinel-1``..``3``); returns the ``rediss+sentinel://`` URL and each process's own
    ``rediss://host:port`` (restarts reuse the port)."""
    internal = bundle.redis_internal()
    tls = TlsFiles(bundle.server.cert, bundle.server.key, bundle.ca_file)
    # both Redis processes may be a replica one day (a failover turns the old primary into
    # one): each knows how to log in to a primary (its TLS files: on its command line)
    auth = workdir / "redis-ha" / "replication.conf"
    write_secret(auth, redis_replication_conf(internal["replication"]))
    nodes: dict[str, str] = {}

    def redis_node(name: str, replica_of: int | None) -> int:
        data = workdir / name
        data.mkdir(exist_ok=True)

        def start(port: int) -> ManagedProcess:
            argv = redis_server_argv(
                binary,
                port,
                bundle,
                host=host,
                data=data,
                persistent=persistent,
                config=auth,
                replica_of=(host, replica_of) if replica_of is not None else None,
            )
            p = procs[name] = ManagedProcess(f"redis-server ({name})", argv, log_dir=logs)
            return p

        port, _ = start_on_free_port(host, start)
        nodes[name] = f"rediss://{host}:{port}"
        return port

    # the one that was the primary when the stack last stopped leads again (a failover may
    # have promoted the second: starting the first as primary would sync the newer data away)
    lead = primary_file(workdir).read_text().strip() if primary_file(workdir).exists() else "redis"
    follow = "redis-2" if lead == "redis" else "redis"
    primary = redis_node(lead, None)
    redis_node(follow, primary)
    users = bundle.sentinel_users()
    sentinels = []
    for i in range(1, SENTINELS + 1):
        name = f"sentinel-{i}"
        home = workdir / name
        home.mkdir(exist_ok=True)
        home.chmod(0o700)

        def start(port: int, name: str = name, home: Path = home) -> ManagedProcess:
            conf = home / "sentinel.conf"  # the sentinel rewrites it (what it learns): its own
            write_secret(
                conf,
                sentinel_conf(
                    port=port,
                    bind=host,
                    home=str(home),
                    tls=tls,
                    primary_host=host,
                    primary_port=primary,
                    sentinel_password=internal["sentinel"],
                    users=users,
                ),
            )
            p = procs[name] = ManagedProcess(name, [binary, str(conf), "--sentinel"], log_dir=logs)
            return p

        port, _ = start_on_free_port(host, start)
        nodes[name] = f"rediss://{host}:{port}"
        sentinels.append(port)
    url = "rediss+sentinel://" + ",".join(f"{host}:{p}" for p in sentinels) + f"/{PRIMARY_NAME}/0"
    _wait_until_watched(host, sentinels, bundle)
    return url, nodes


def primary_file(workdir: Path) -> Path:
    return workdir / "redis-ha" / "primary"


def remember_primary(workdir: Path, nodes: dict[str, str], bundle: Bundle) -> None:
    """Note which Redis the sentinels call the primary now (``start_redis_ha`` starts it as
    the primary next time); nothing if no sentinel answers."""
    addresses = {name: node_address(url) for name, url in nodes.items()}
    by_port = {port: name for name, (_, port) in addresses.items() if name.startswith("redis")}
    for name, (host, port) in addresses.items():
        if not name.startswith("sentinel-"):
            continue
        with sentinel_client(host, port, bundle) as s:
            try:
                addr: Any = s.sentinel_get_master_addr_by_name(PRIMARY_NAME)
            except redis.RedisError:
                continue
        if addr and int(addr[1]) in by_port:
            primary_file(workdir).write_text(by_port[int(addr[1])] + "\n")
            return


def _wait_until_watched(host: str, ports: list[int], bundle: Bundle, timeout: float = 30) -> None:
    """Until every sentinel knows the replica and the other sentinels (a failover needs them)."""
    deadline = time.monotonic() + timeout
    last = ""
    clients = {port: sentinel_client(host, port, bundle) for port in ports}
    try:
        while time.monotonic() < deadline:
            ready = 0
            for port, s in clients.items():
                try:
                    replicas: list[dict[str, Any]] = s.sentinel_slaves(PRIMARY_NAME)
                    others: list[dict[str, Any]] = s.sentinel_sentinels(PRIMARY_NAME)  # type: ignore[assignment]
                    online = [r for r in replicas if "s_down" not in r.get("flags", "")]
                    if online and len(others) >= SENTINELS - 1:
                        ready += 1
                    else:
                        known = f"{len(online)} replica(s), {len(others)} other sentinel(s)"
                        last = f"sentinel :{port} knows {known}"
                except redis.RedisError as e:
                    last = f"sentinel :{port}: {e}"
            if ready == len(ports):
                return
            time.sleep(0.2)
    finally:
        for s in clients.values():
            s.close()
    raise TimeoutError(f"Redis Sentinel did not form within {timeout:g} s: {last}")
