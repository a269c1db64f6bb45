"""The security bundle: everything a deployment needs before its brokers start.

``create_bundle(D, hosts)`` (what ``echoctl pki init --dir D`` runs) writes::

    D/ca.pem, D/ca.key                 the private CA (key 0600)
    D/server.pem, D/server.key         the brokers' and the API's certificate (key 0600)
    D/identities/<service>.json        each service's credentials (0600): logins for
                                       MQTT, NATS and Redis (``credentials.Credentials``)
    D/admin.token                      the first admin API token (0600)
    D/mosquitto/dynsec.json            Mosquitto's dynamic-security state (services' roles;
                                       the master adds devices at run time)
    D/nats/auth.conf                   NATS users and permissions (include it)
    D/redis/users.acl                  Redis ACL users (``aclfile``)
    D/redis/ha.json                    the passwords of Redis replication and Sentinel (0600)

and with ``ha`` (compose's ``ha`` profile: NATS nodes ``nats``, ``nats-2``, ``nats-3``; Redis
``redis`` and ``redis-replica``; sentinels ``sentinel-1``..``3``)::

    D/nats/cluster-<n>.conf            NATS node n of the cluster (its route login inside)
    D/redis/replication.conf           a Redis' login to its primary (either may be a replica)
    D/redis/sentinel.conf              a sentinel's configuration (each copies it: it rewrites it)
    D/prometheus/client.pem, .key      Prometheus' client certificate: the services' metrics
                                       endpoints accept only certificates of the CA
    D/prometheus/web.yml, password     Prometheus' HTTPS and the login that may query it

Running it again keeps what exists (a CA is never replaced silently) and creates only
what is missing. A CA you bring (``ca.pem`` + ``ca.key`` already in ``D``) is used as is.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from pydantic import SecretStr

from . import brokerauth, ha_configs, pki
from .brokerauth import SERVICE_RIGHTS, TESTER, TESTER_RIGHTS, Identity
from .credentials import Credentials
from .natsjwt import NkeyPair
from .secretfiles import new_secret, read_secret, write_secret

MOSQUITTO_USER = "mosquitto"
PROMETHEUS_USER = "prometheus"  # the account Debian's package runs Prometheus as
PROMETHEUS_LOGIN = "echo"  # who may query Prometheus (basic auth over HTTPS)


@dataclass(frozen=True)
class Bundle:
    root: Path

    @property
    def ca(self) -> pki.KeyPair:
        return pki.KeyPair(self.root / "ca.pem", self.root / "ca.key")

    @property
    def server(self) -> pki.KeyPair:
        return pki.KeyPair(self.root / "server.pem", self.root / "server.key")

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.pem"

    def credentials_file(self, identity: str) -> Path:
        return self.root / "identities" / f"{identity}.json"

    def credentials(self, identity: str) -> Credentials:
        return Credentials.load(self.credentials_file(identity))

    @property
    def admin_token_file(self) -> Path:
        return self.root / "admin.token"

    def admin_token(self) -> str:
        return read_secret(self.admin_token_file)

    @property
    def api_key(self) -> Path:
        """The server key as the master reads it to serve HTTPS (its own copy in containers)."""
        return self.root / "api" / "server.key"

    @property
    def mosquitto_dir(self) -> Path:
        return self.root / "mosquitto"

    @property
    def dynsec_file(self) -> Path:
        return self.mosquitto_dir / "dynsec.json"

    @property
    def mosquitto_key(self) -> Path:
        """The server key as Mosquitto reads it (its own copy when it drops root)."""
        return self.mosquitto_dir / "server.key"

    @property
    def nats_auth_file(self) -> Path:
        return self.root / "nats" / "auth.conf"

    @property
    def redis_acl_file(self) -> Path:
        return self.root / "redis" / "users.acl"

    @property
    def redis_ha_file(self) -> Path:
        return self.root / "redis" / "ha.json"

    def redis_internal(self) -> dict[str, str]:
        """The passwords of Redis' replication and Sentinel logins (made once, kept 0600)."""
        return _kept_secrets(self.redis_ha_file, "replication", "sentinel")

    def sentinel_users(self) -> str:
        """The ``user`` lines of a sentinel's configuration (``brokerauth.render_sentinel_users``)."""
        names = [n for n in (*brokerauth.SERVICES, TESTER) if self.credentials_file(n).exists()]
        idents = _identities_from_files(self, names, redis_only=True)
        return brokerauth.render_sentinel_users(idents, self.redis_internal())

    @property
    def prometheus_dir(self) -> Path:
        return self.root / "prometheus"

    @property
    def scraper(self) -> pki.KeyPair:
        """The client certificate Prometheus presents to the services' metrics endpoints."""
        return pki.KeyPair(self.prometheus_dir / "client.pem", self.prometheus_dir / "client.key")

    @property
    def prometheus_key(self) -> Path:
        """The server key as Prometheus reads it to serve HTTPS (its own copy)."""
        return self.prometheus_dir / "server.key"

    @property
    def prometheus_password_file(self) -> Path:
        """The password of ``PROMETHEUS_LOGIN``, who may query Prometheus."""
        return self.prometheus_dir / "password"

    def service_key(self, name: str) -> Path:
        """A service's own copy of the server key (its metrics endpoint's HTTPS, in containers)."""
        return self.root / "keys" / f"{name}.key"

    @property
    def grafana_dir(self) -> Path:
        return self.root / "grafana"

    @property
    def grafana_admin_password_file(self) -> Path:
        """Grafana's admin password (``GF_SECURITY_ADMIN_PASSWORD__FILE``): never admin/admin."""
        return self.grafana_dir / "admin.password"

    @property
    def prometheus_web_config(self) -> Path:
        """Prometheus' ``--web.config.file``: HTTPS with the server certificate, basic auth."""
        return self.prometheus_dir / "web.yml"


def mosquitto_owner() -> tuple[int, int] | None:
    """Mosquitto started as root drops to the ``mosquitto`` account: its files must be its own."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(MOSQUITTO_USER)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def create_bundle(
    root: Path,
    hosts: list[str] | tuple[str, ...] = pki.DEFAULT_HOSTS,
    *,
    tester: bool = False,
    owners: Mapping[str, tuple[int, int]] | None = None,
    ha: bool = False,
) -> Bundle:
    """Create (or complete) the bundle in ``root``; returns it. Idempotent.

    ``owners``: broker or service -> (uid, gid) of the account it runs as, when that is not
    ours (containers): a broker (``mosquitto``, ``redis``) gets its own copy of the server key
    and its auth files; a service (``master``, ``registry``...) its credentials file, and
    the master also the admin token and a copy of the server key for HTTPS (``api/``).
    Locally, a Mosquitto started as root drops to the ``mosquitto`` account: that is found
    by itself."""
    b = Bundle(root)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    if not b.ca.cert.exists():
        pki.create_ca(root)
    if not b.server.cert.exists() or not b.server.key.exists():
        pki.issue_server(b.ca, b.server, list(hosts))
    else:
        had = pki.server_hosts(b.server.cert)
        missing = [h for h in hosts if h not in had]
        if missing:  # a host asked for since (e.g. the ha profile's nodes): the same key, more names
            pki.issue_server(b.ca, b.server, [*had, *missing], keep_key=True)
    names = [*brokerauth.SERVICES, *([TESTER] if tester else [])]
    if not all(b.credentials_file(n).exists() for n in names) or not b.dynsec_file.exists():
        _write_identities(b, names)
    else:  # the passwords stay; the rights are those of this version of ECHO
        _render_static(b, names)
    if not b.admin_token_file.exists():
        write_secret(b.admin_token_file, "echo_" + new_secret())
    _render_nats_server(b)
    owners = dict(owners or {})
    _prometheus_files(b, owners.get("prometheus") or prometheus_owner())
    if "grafana" in owners:
        _grafana_files(b, owners["grafana"])
    _give_mosquitto_its_files(b, owners.get("mosquitto") or mosquitto_owner())
    if "redis" in owners:
        for p in (b.redis_acl_file, b.root / "redis" / "server.key"):
            if p.name == "server.key" and not p.exists():
                write_secret(p, b.server.key.read_bytes())
            os.chown(p, *owners["redis"])
        os.chown(b.root / "redis", *owners["redis"])
        (b.root / "redis").chmod(0o700)
        b.root.chmod(0o711)
    if ha:
        _render_compose_ha(b, owners.get("redis"))
    services = {n: o for n, o in owners.items() if n in brokerauth.SERVICES}
    if services:
        b.root.chmod(0o711)
        (b.root / "identities").chmod(0o711)  # each reads its own file, lists nothing
        for name, owner in services.items():
            os.chown(b.credentials_file(name), *owner)
            key = b.service_key(name)  # its metrics endpoint serves HTTPS
            key.parent.mkdir(exist_ok=True)
            key.parent.chmod(0o711)
            if not key.exists():
                write_secret(key, b.server.key.read_bytes())
            os.chown(key, *owner)
        if "master" in services:
            os.chown(b.admin_token_file, *services["master"])
            api_dir = b.root / "api"
            api_dir.mkdir(exist_ok=True)
            api_dir.chmod(0o711)
            if not b.api_key.exists():
                write_secret(b.api_key, b.server.key.read_bytes())
            os.chown(b.api_key, *services["master"])
    return b


def _write_identities(b: Bundle, names: list[str]) -> None:
    idents = [Identity(n, TESTER_RIGHTS if n == TESTER else SERVICE_RIGHTS[n]) for n in names]
    issuer = NkeyPair.generate()  # the master's auth callout signs devices' NATS logins with it
    for i in idents:
        r = i.rights
        creds = Credentials(
            service=i.name,
            ca_file=b.ca_file,
            username=i.name if r.mqtt is not None or r.dynsec_admin else None,
            password=i.mqtt_password if r.mqtt is not None or r.dynsec_admin else None,
            nats_username=i.name if r.nats is not None else None,
            nats_password=i.nats_password if r.nats is not None else None,
            redis_username=i.name if r.redis is not None else None,
            redis_password=i.redis_password if r.redis is not None else None,
            nats_issuer_seed=issuer.seed if i.name == "master" else None,
            nats_system_username=brokerauth.system_user(i.name) if r.nats_system else None,
            nats_system_password=i.nats_system_password if r.nats_system else None,
        )
        creds.save(b.credentials_file(i.name))
    write_secret(b.dynsec_file, brokerauth.render_dynsec(idents))
    write_secret(b.nats_auth_file, brokerauth.render_nats_users(idents, issuer.public_key))
    write_secret(b.redis_acl_file, brokerauth.render_redis_acl(idents, b.redis_internal()))


def _render_nats_server(b: Bundle) -> None:
    """``nats/server.conf``: TLS, the monitor on loopback only, the users (``auth.conf``).
    Run ``nats-server -c <it> -js -sd <store> -p 4222`` (compose does)."""
    text = ha_configs.nats_conf(
        listen=None,  # -p
        store_dir=None,  # -js -sd
        tls=ha_configs.TlsFiles(b.server.cert, b.server.key, b.ca_file),
        auth="include ./auth.conf\n",
        monitor="127.0.0.1:8222",
    )
    write_secret(b.root / "nats" / "server.conf", text)
    (b.root / "nats").chmod(0o700)


COMPOSE_NATS_NODES = ("nats", "nats-2", "nats-3")


def _render_compose_ha(b: Bundle, redis_owner: tuple[int, int] | None) -> None:
    """The ``ha`` profile's broker configurations (``ha_configs``), by the containers' names
    and their paths under ``b.root`` (the volume is mounted where ``pki init`` ran)."""
    route_password = _kept_secrets(b.root / "nats" / "cluster.json", "route_password")["route_password"]
    tls = ha_configs.TlsFiles(b.server.cert, b.server.key, b.ca_file)
    for i, node in enumerate(COMPOSE_NATS_NODES, 1):
        text = ha_configs.nats_cluster_conf(
            server_name=f"n{i}",
            listen="0.0.0.0:4222",
            route_listen="0.0.0.0:6222",
            routes=[f"{other}:6222" for other in COMPOSE_NATS_NODES if other != node],
            route_password=route_password,
            tls=tls,
            store_dir="/data",
            auth="include ./auth.conf\n",
            monitor="127.0.0.1:8222",
        )
        write_secret(b.root / "nats" / f"cluster-{i}.conf", text)
    redis_key = b.root / "redis" / "server.key"
    redis_tls = ha_configs.TlsFiles(
        b.server.cert, redis_key if redis_key.exists() else b.server.key, b.ca_file
    )
    internal = b.redis_internal()
    files = {
        "replication.conf": ha_configs.redis_replication_conf(internal["replication"]),
        "sentinel.conf": ha_configs.sentinel_conf(
            port=26379,
            bind=None,
            home="/data",
            tls=redis_tls,
            primary_host="redis",
            primary_port=6379,
            sentinel_password=internal["sentinel"],
            users=b.sentinel_users(),
            hostnames=True,
        ),
    }
    for name, text in files.items():
        write_secret(b.root / "redis" / name, text, owner=redis_owner)


def _kept_secrets(path: Path, *names: str) -> dict[str, str]:
    """Passwords made once and kept in a JSON file (0600): what ``path`` holds, or (no file
    yet) a new password for each of ``names``, written there."""
    if path.exists():
        kept: dict[str, str] = json.loads(read_secret(path))
        return kept
    made = {n: new_secret() for n in names}
    write_secret(path, json.dumps(made))
    return made


def _identities_from_files(b: Bundle, names: list[str], *, redis_only: bool = False) -> list[Identity]:
    """The identities ``names`` with this version's rights and the passwords of their
    credentials files; a password a file lacks is a new one (in no file: ``_render_static``
    saves the logins it must). ``redis_only``: only those whose file holds a Redis password."""

    def secret(value: SecretStr | None, default: str) -> str:
        return value.get_secret_value() if value else default

    idents = []
    for n in names:
        c = b.credentials(n)
        if redis_only and c.redis_password is None:
            continue
        rights = TESTER_RIGHTS if n == TESTER else SERVICE_RIGHTS[n]
        fresh = Identity(n, rights)
        idents.append(
            Identity(
                n,
                rights,
                mqtt_password=secret(c.password, fresh.mqtt_password),
                nats_password=secret(c.nats_password, fresh.nats_password),
                redis_password=secret(c.redis_password, fresh.redis_password),
                nats_system_password=secret(c.nats_system_password, fresh.nats_system_password),
            )
        )
    return idents


def _render_static(b: Bundle, names: list[str]) -> None:
    """Re-render the NATS and Redis users from the credentials files (the passwords stay);
    a login this version adds to an identity (e.g. the master's NATS system login) is made
    now and saved, never left empty."""
    idents = _identities_from_files(b, names)
    for i in idents:
        c = b.credentials(i.name)
        if i.rights.nats_system and c.nats_system_password is None:  # the new password, saved
            c = c.model_copy(
                update={
                    "nats_system_username": brokerauth.system_user(i.name),
                    "nats_system_password": SecretStr(i.nats_system_password),
                }
            )
            c.save(b.credentials_file(i.name))
    seed = b.credentials("master").nats_issuer_seed
    issuer = NkeyPair.from_seed(seed.get_secret_value()).public_key if seed else None
    write_secret(b.nats_auth_file, brokerauth.render_nats_users(idents, issuer))
    write_secret(b.redis_acl_file, brokerauth.render_redis_acl(idents, b.redis_internal()))


def _give_mosquitto_its_files(b: Bundle, owner: tuple[int, int] | None) -> None:
    b.mosquitto_dir.mkdir(parents=True, exist_ok=True)
    if not b.mosquitto_key.exists():
        write_secret(b.mosquitto_key, b.server.key.read_bytes(), owner=owner)
    if owner is None:
        b.mosquitto_dir.chmod(0o700)
        return
    # the plugin rewrites dynsec.json (a new file, then a rename): the directory must be its own
    os.chown(b.mosquitto_dir, *owner)
    b.mosquitto_dir.chmod(0o700)
    for p in b.mosquitto_dir.iterdir():
        with contextlib.suppress(OSError):
            os.chown(p, *owner)
    # it must be able to reach its directory: the bundle root is 0700 (root's) otherwise
    b.root.chmod(0o711)
    allow_traversal(b.root.parent)


def prometheus_owner() -> tuple[int, int] | None:
    """Prometheus started as root runs as the ``prometheus`` account: its files must be its own."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(PROMETHEUS_USER)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def _prometheus_files(b: Bundle, owner: tuple[int, int] | None) -> None:
    """Prometheus' own files: its client certificate for scraping (mutual TLS), a copy of the
    server key (it serves HTTPS), the query login's password and the web config with its
    bcrypt hash. Nobody queries or scrapes anonymously."""
    d = b.prometheus_dir
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    if not b.scraper.cert.exists() or not b.scraper.key.exists():
        pki.issue_client(b.ca, b.scraper, "prometheus")
    if not b.prometheus_key.exists():
        write_secret(b.prometheus_key, b.server.key.read_bytes())
    if not b.prometheus_password_file.exists():
        write_secret(b.prometheus_password_file, new_secret())
    if not b.prometheus_web_config.exists():
        hashed = bcrypt.hashpw(read_secret(b.prometheus_password_file).encode(), bcrypt.gensalt(rounds=10))
        web = {
            "tls_server_config": {"cert_file": str(b.server.cert), "key_file": str(b.prometheus_key)},
            "basic_auth_users": {PROMETHEUS_LOGIN: hashed.decode()},
        }
        write_secret(b.prometheus_web_config, json.dumps(web, indent=2))  # JSON is YAML
    if owner is not None:
        os.chown(d, *owner)
        for p in (b.scraper.key, b.prometheus_key, b.prometheus_web_config):
            os.chown(p, *owner)
        b.root.chmod(0o711)
        allow_traversal(b.root.parent)


def _grafana_files(b: Bundle, owner: tuple[int, int]) -> None:
    """Grafana's (compose): its admin password, its copy of the server key (it serves HTTPS)
    and of Prometheus' query password (its datasource logs in with it)."""
    d = b.grafana_dir
    d.mkdir(parents=True, exist_ok=True)
    if not b.grafana_admin_password_file.exists():
        write_secret(b.grafana_admin_password_file, new_secret())
    copies = {d / "server.key": b.server.key, d / "prometheus.password": b.prometheus_password_file}
    for copy, source in copies.items():
        if not copy.exists():
            write_secret(copy, source.read_bytes())
    os.chown(d, *owner)
    d.chmod(0o700)
    for p in (b.grafana_admin_password_file, *copies):
        os.chown(p, *owner)
    b.root.chmod(0o711)


def allow_traversal(directory: Path) -> None:
    """Let other accounts pass through (not list) our directories above ``directory``, so
    that a broker which dropped root can reach its own files below (e.g. pytest's 0700 base)."""
    uid = os.geteuid()
    for d in (directory, *directory.parents):
        with contextlib.suppress(OSError):
            st = d.stat()
            if st.st_uid == uid and not st.st_mode & 0o001:
                d.chmod(stat.S_IMODE(st.st_mode) | 0o001)
