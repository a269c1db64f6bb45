"""The private CA, the security bundle, secret files and the broker auth renderings (no brokers)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from echo_cli.main import app
from echo_shared import brokerauth, pki
from echo_shared.bundle import create_bundle
from echo_shared.credentials import Credentials
from echo_shared.dynsec import ChannelGrant, device_rights
from echo_shared.names import Names
from echo_shared.secretfiles import SecretFileError, read_secret, write_secret


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_a_server_certificate_is_signed_by_the_ca_for_its_hosts(tmp_path: Path) -> None:
    ca = pki.create_ca(tmp_path)
    server = pki.issue_server(ca, pki.KeyPair(tmp_path / "s.pem", tmp_path / "s.key"), ["broker", "10.0.0.7"])
    assert mode(ca.key) == 0o600 and mode(server.key) == 0o600 and mode(server.cert) == 0o644
    assert set(pki.server_hosts(server.cert)) == {"broker", "10.0.0.7"}
    cert = x509.load_pem_x509_certificate(server.cert.read_bytes())
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    with pytest.raises(pki.PkiError):
        pki.issue_server(ca, pki.KeyPair(tmp_path / "x.pem", tmp_path / "x.key"), [])


def test_a_ca_key_that_does_not_fit_its_certificate_is_refused(tmp_path: Path) -> None:
    a = pki.create_ca(tmp_path / "a")
    b = pki.create_ca(tmp_path / "b")
    with pytest.raises(pki.PkiError, match="does not belong"):
        pki.load_ca(pki.KeyPair(a.cert, b.key))


def test_secret_files_are_private_and_others_readable_ones_refused(tmp_path: Path) -> None:
    p = tmp_path / "deep" / "token"
    write_secret(p, "s3cret\n")
    assert mode(p) == 0o600 and read_secret(p) == "s3cret"
    p.chmod(0o644)
    with pytest.raises(SecretFileError, match="chmod 600"):
        read_secret(p)
    with pytest.raises(SecretFileError):
        read_secret(tmp_path / "missing")


def test_the_bundle_is_complete_private_and_kept_when_made_again(tmp_path: Path) -> None:
    b = create_bundle(tmp_path / "pki", ["master"])
    for name in brokerauth.SERVICES:
        assert mode(b.credentials_file(name)) == 0o600
    for p in (b.ca.key, b.server.key, b.admin_token_file, b.dynsec_file, b.nats_auth_file, b.redis_acl_file):
        assert mode(p) == 0o600, p
    master = b.credentials("master")
    assert master.username == "master" and master.nats_issuer_seed and master.nats_system_username
    assert b.credentials("scheduler").redis_username is None  # no Redis for the scheduler
    assert b.credentials("scheduler").username is None  # nor MQTT
    ca_before, pw_before = b.ca.cert.read_bytes(), master.password
    again = create_bundle(tmp_path / "pki", ["master"])
    assert again.ca.cert.read_bytes() == ca_before and again.credentials("master").password == pw_before


def test_bring_your_own_ca(tmp_path: Path) -> None:
    mine = pki.create_ca(tmp_path / "mine", name="My Company CA")
    root = tmp_path / "pki"
    root.mkdir()
    for f in ("ca.pem", "ca.key"):
        write_secret(root / f, (tmp_path / "mine" / f).read_bytes())
    b = create_bundle(root)
    assert b.ca.cert.read_bytes() == mine.cert.read_bytes()
    cert = x509.load_pem_x509_certificate(b.server.cert.read_bytes())
    assert "My Company CA" in cert.issuer.rfc4514_string()


def test_an_older_bundle_gets_the_logins_this_version_adds(tmp_path: Path) -> None:
    b = create_bundle(tmp_path / "pki")
    path = b.credentials_file("master")
    doc = json.loads(path.read_text())
    del doc["nats_system_username"], doc["nats_system_password"]
    write_secret(path, json.dumps(doc))
    create_bundle(tmp_path / "pki")
    creds = Credentials.load(path)
    assert creds.nats_system_username == "master-sys" and creds.nats_system_password
    assert "master-sys" in b.nats_auth_file.read_text()


def test_the_renderings_deny_by_default(tmp_path: Path) -> None:
    b = create_bundle(tmp_path / "pki", tester=False)
    dynsec = json.loads(b.dynsec_file.read_text())
    assert dynsec["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    assert {c["username"] for c in dynsec["clients"]} == {"master", "registry"}  # no tester by default
    acl = b.redis_acl_file.read_text().splitlines()
    assert acl[0].startswith("user default off ") and " on " not in acl[0] and "nopass" not in acl[0]
    registry = next(line for line in acl if line.startswith("user registry "))
    assert "~*:device:*" in registry and "~*:df:*" not in registry and "-@dangerous" in registry
    nats = b.nats_auth_file.read_text()
    assert "auth_callout" in nats and '"master"' in nats and "tester" not in nats
    for line in nats.splitlines():
        assert "password" not in line or "$2" in line  # bcrypt hashes only


def test_a_devices_mqtt_rights_are_its_own_topics_and_its_tasks_channels() -> None:
    n = Names("echo")
    topic = n.data_topic("df1", "a", "b")
    producer = device_rights(n, "edge-1", [ChannelGrant(topic, produce=True)])
    consumer = device_rights(n, "edge-2", [ChannelGrant(topic, produce=False)])
    assert producer.subscribe == ("echo/dev/edge-1/cmd", f"{topic}/progress", f"{topic}/resend")
    assert topic in producer.publish and all(t.startswith("echo/dev/edge-1/") for t in producer.publish[:7])
    assert topic in consumer.subscribe and f"{topic}/progress" in consumer.publish
    app = device_rights(n, "edge-1", [ChannelGrant("plant/temps", produce=True, app="mqtt")])
    assert "plant/temps" in app.publish and "plant/temps/progress" not in app.subscribe


@pytest.mark.parametrize(
    ("topic", "nats", "reserved"),
    [
        ("plant/temps", False, None),
        ("#", False, "echo/dev/#"),
        ("echo/#", False, "echo/dev/#"),
        ("+/df/x/y/z", False, "echo/df/#"),
        ("$SYS/broker", False, "$SYS/#"),
        ("echo-plant/x", False, None),
        ("plant.temps", True, None),
        (">", True, "echo.>"),
        ("echo.df.x.a.b", True, "echo.>"),
        ("$JS.API.STREAM.INFO.x", True, "$JS.>"),
    ],
)
def test_operators_topics_may_not_overlap_echos_own(topic: str, nats: bool, reserved: str | None) -> None:
    assert Names("echo").reserved_overlap(topic, nats=nats) == reserved


def test_echoctl_pki_init(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["pki", "init", "--dir", str(tmp_path / "pki"), "--host", "broker.example"])
    assert r.exit_code == 0, r.output
    assert "broker.example" in pki.server_hosts(tmp_path / "pki" / "server.pem")
    bad = CliRunner().invoke(app, ["pki", "init", "--dir", str(tmp_path / "pki"), "--owner", "nobody=1"])
    assert bad.exit_code == 1 and "--owner expects NAME=UID" in bad.output


def test_the_ha_profile_gets_a_nats_cluster_and_sentinels_by_container_name(tmp_path: Path) -> None:
    b = create_bundle(tmp_path / "pki", ("nats", "nats-2", "nats-3", "redis", "redis-replica"), ha=True)
    nodes = [(tmp_path / "pki" / "nats" / f"cluster-{i}.conf").read_text() for i in (1, 2, 3)]
    names = ("nats", "nats-2", "nats-3")
    password = json.loads(read_secret(tmp_path / "pki" / "nats" / "cluster.json"))["route_password"]
    for i, text in enumerate(nodes):
        assert f"server_name: n{i + 1}\n" in text and "include ./auth.conf" in text
        assert f"password: {json.dumps(password)}" in text  # routes log in
        routes = [f"@{n}:6222" for n in names if n != names[i]]
        assert all(r in text for r in routes) and f"@{names[i]}:6222" not in text, text
        assert "ca_file" in text  # routes verify each other against the CA
    sentinel = (tmp_path / "pki" / "redis" / "sentinel.conf").read_text()
    assert "sentinel resolve-hostnames yes" in sentinel and "sentinel monitor echo redis 6379 2" in sentinel
    assert "user default off" in sentinel
    for service in ("master", "registry", "migrator"):
        assert f"user {service} on #" in sentinel  # hashed, and only to look the primary up
    assert "masteruser echo-replication" in (tmp_path / "pki" / "redis" / "replication.conf").read_text()
    for f in (*(tmp_path / "pki" / "nats").glob("cluster*"), *(tmp_path / "pki" / "redis").glob("*.conf")):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert b.redis_internal()["sentinel"] not in (tmp_path / "pki" / "redis" / "users.acl").read_text()
    # made again: the route password stays (running nodes keep talking)
    create_bundle(tmp_path / "pki", ha=True)
    assert json.loads(read_secret(tmp_path / "pki" / "nats" / "cluster.json"))["route_password"] == password
    # nothing of it without ha
    create_bundle(tmp_path / "plain")
    assert not list((tmp_path / "plain" / "nats").glob("cluster*"))


def test_a_host_asked_for_later_is_added_to_the_same_key(tmp_path: Path) -> None:
    """An existing bundle made again with more hosts (an upgrade to the ha profile): the server
    certificate gains the names, keeps its key (the brokers' copies of it stay valid)."""
    create_bundle(tmp_path / "pki", ("broker",))
    server = tmp_path / "pki" / "server.pem"
    key = (tmp_path / "pki" / "server.key").read_bytes()
    create_bundle(tmp_path / "pki", ("broker", "nats-2", "10.0.0.9"))
    assert {"broker", "nats-2", "10.0.0.9"} <= set(pki.server_hosts(server))
    assert (tmp_path / "pki" / "server.key").read_bytes() == key
    cert = x509.load_pem_x509_certificate(server.read_bytes())
    own = serialization.load_pem_private_key(key, password=None)
    assert cert.public_key().public_numbers() == own.public_key().public_numbers()  # type: ignore[union-attr]
