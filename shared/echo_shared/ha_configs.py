"""Configuration of the brokers, one renderer for every deployment.

The dev stack (``echoctl dev up [--ha]``, the chaos tests) and the compose bundle (``echoctl pki
init``, its ``ha`` profile) write these same texts; only addresses differ.

- ``nats_conf``: a NATS server: its client listener (TLS, or plaintext for the benchmark of
  what TLS costs), JetStream, the monitor, the users of ``auth.conf``.
- ``nats_cluster_conf``: one node of a NATS cluster: ``nats_conf`` and routes (TLS, verified
  against the CA, authenticated by a route login).
- ``redis_replication_conf``: what a Redis needs to be a replica (a failover can make any of
  them one): the replication login, replication over TLS (its TLS files, listener and
  certificate, are on its command line).
- ``sentinel_conf``: a sentinel watching the primary ``PRIMARY_NAME`` (quorum 2), TLS only,
  logging in to Redis and to the other sentinels as ``echo-sentinel``, with ``users`` (the
  services' logins, allowed to look the primary up).

Each text holds passwords: the caller writes it 0600.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .brokerauth import REDIS_REPLICATION_USER, REDIS_SENTINEL_USER

PRIMARY_NAME = "echo"  # what the sentinels call the primary they watch
QUORUM = 2
DOWN_AFTER_MS = 1500  # silence after which a sentinel thinks the primary is down
FAILOVER_TIMEOUT_MS = 10_000
ROUTE_USER = "route"


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


def _q(s: str) -> str:
    """A NATS configuration string. Only ``\\`` and ``"`` need escaping; anything else goes in
    as it is (NATS refuses JSON's ``\\u`` escapes: ``json.dumps`` breaks non-ASCII paths)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _nats_tls(tls: TlsFiles, *, ca: bool) -> str:
    """A ``tls`` block; ``ca``: with ``ca_file``, the CA that signs the peers (routes verify
    each other; a client listener asks its clients for no certificate, it needs none)."""
    files = f"cert_file: {_q(str(tls.cert))}, key_file: {_q(str(tls.key))}"
    if ca:
        files += f", ca_file: {_q(str(tls.ca))}"
    return f"tls {{ {files}, timeout: 5 }}"


def nats_conf(
    *,
    listen: str | None,
    store_dir: str | None,
    tls: TlsFiles | None,
    auth: str,
    monitor: str | None = None,
    server_name: str | None = None,
    cluster: str | None = None,
) -> str:
    """A NATS server. ``listen`` and ``store_dir`` None: given on the command line instead
    (compose: ``-p``, ``-js -sd``); ``tls`` None: a plaintext listener (only the benchmark of
    what TLS costs: the same users); ``monitor``: the HTTP monitor's ``host:port``; ``auth``:
    the text of ``auth.conf`` (or an ``include`` of it); ``cluster``: a ``cluster`` block
    (``nats_cluster_conf`` makes it)."""
    return (
        (f"server_name: {server_name}\n" if server_name else "")
        + (f"listen: {_q(listen)}\n" if listen else "")
        + (f"http: {_q(monitor)}\n" if monitor else "")
        + (f"jetstream {{ store_dir: {_q(store_dir)} }}\n" if store_dir else "")
        + (_nats_tls(tls, ca=False) + "\n" if tls else "")
        + (cluster + "\n" if cluster else "")
        + auth
    )


def nats_cluster_conf(
    *,
    server_name: str,
    listen: str,
    route_listen: str,
    routes: list[str],
    route_password: str,
    tls: TlsFiles,
    store_dir: str,
    auth: str,
    monitor: str | None = None,
) -> str:
    """One cluster node (``nats_conf`` with routes); ``routes``: the other nodes' ``host:port``."""
    peers = ", ".join(_q(f"nats-route://{ROUTE_USER}:{route_password}@{r}") for r in routes)
    cluster = (
        f"cluster {{ name: echo, listen: {_q(route_listen)}, "
        f"authorization {{ user: {ROUTE_USER}, password: {_q(route_password)} }}, "
        f"routes: [{peers}], {_nats_tls(tls, ca=True)} }}"
    )
    return nats_conf(
        listen=listen,
        store_dir=store_dir,
        tls=tls,
        auth=auth,
        monitor=monitor,
        server_name=server_name,
        cluster=cluster,
    )


def _tls_lines(tls: TlsFiles) -> str:
    """A sentinel's TLS: its listener, and TLS to the Redis it watches (``tls-replication``)."""
    return (
        f"tls-cert-file {tls.cert}\ntls-key-file {tls.key}\ntls-ca-cert-file {tls.ca}\n"
        "tls-auth-clients no\ntls-replication yes\n"
    )


def redis_replication_conf(replication_password: str) -> str:
    """The replication login and replication over TLS, nothing else: a Redis takes its own
    TLS files on its command line (compose's ``command``, ``echo_cli.devstack.redis_ha``)."""
    return f"masteruser {REDIS_REPLICATION_USER}\nmasterauth {replication_password}\ntls-replication yes\n"


def sentinel_conf(
    *,
    port: int,
    bind: str | None,
    home: str,
    tls: TlsFiles,
    primary_host: str,
    primary_port: int,
    sentinel_password: str,
    users: str,
    hostnames: bool = False,
) -> str:
    """``hostnames``: Redis and sentinels are known by name (containers), not address."""
    return (
        f"port 0\ntls-port {port}\n"
        + (f"bind {bind}\n" if bind else "")
        + f"dir {home}\n"
        + _tls_lines(tls)
        + ("sentinel resolve-hostnames yes\nsentinel announce-hostnames yes\n" if hostnames else "")
        + f"sentinel monitor {PRIMARY_NAME} {primary_host} {primary_port} {QUORUM}\n"
        f"sentinel down-after-milliseconds {PRIMARY_NAME} {DOWN_AFTER_MS}\n"
        f"sentinel failover-timeout {PRIMARY_NAME} {FAILOVER_TIMEOUT_MS}\n"
        f"sentinel auth-user {PRIMARY_NAME} {REDIS_SENTINEL_USER}\n"
        f"sentinel auth-pass {PRIMARY_NAME} {sentinel_password}\n"
        f"sentinel sentinel-user {REDIS_SENTINEL_USER}\n"
        f"sentinel sentinel-pass {sentinel_password}\n" + users
    )
