"""The one NATS renderer (``ha_configs.nats_conf``) that the dev stack, the compose bundle and
the clusters share: its parts, its quoting (no brokers)."""

from __future__ import annotations

from pathlib import Path

from echo_shared.ha_configs import TlsFiles, nats_cluster_conf, nats_conf

TLS = TlsFiles(Path("/p/server.pem"), Path("/p/server.key"), Path("/p/ca.pem"))
CLIENT_TLS = 'tls { cert_file: "/p/server.pem", key_file: "/p/server.key", timeout: 5 }\n'


def test_a_single_server_with_tls_and_in_plaintext_has_the_same_users() -> None:
    secure = nats_conf(listen="127.0.0.1:4222", store_dir="/s", tls=TLS, auth="AUTH\n")
    assert secure == 'listen: "127.0.0.1:4222"\njetstream { store_dir: "/s" }\n' + CLIENT_TLS + "AUTH\n"
    plain = nats_conf(listen="127.0.0.1:4222", store_dir="/s", tls=None, auth="AUTH\n")
    assert plain == secure.replace(CLIENT_TLS, "")
    assert "tls" not in plain


def test_what_the_command_line_gives_is_left_out() -> None:
    """Compose's ``server.conf``: ``-p`` and ``-js -sd`` on the command line."""
    auth = "include ./auth.conf\n"
    text = nats_conf(listen=None, store_dir=None, tls=TLS, auth=auth, monitor="127.0.0.1:8222")
    assert text == 'http: "127.0.0.1:8222"\n' + CLIENT_TLS + "include ./auth.conf\n"


def test_a_cluster_node_verifies_its_routes_against_the_ca() -> None:
    text = nats_cluster_conf(
        server_name="n1",
        listen="0.0.0.0:4222",
        route_listen="0.0.0.0:6222",
        routes=["nats-2:6222", "nats-3:6222"],
        route_password="pw",
        tls=TLS,
        store_dir="/data",
        auth="include ./auth.conf\n",
        monitor="127.0.0.1:8222",
    )
    head = (
        'server_name: n1\nlisten: "0.0.0.0:4222"\nhttp: "127.0.0.1:8222"\njetstream { store_dir: "/data" }\n'
    )
    assert text.startswith(head + CLIENT_TLS + "cluster { name: echo, ")
    assert text.endswith(" }\ninclude ./auth.conf\n")
    assert 'authorization { user: route, password: "pw" }' in text
    assert 'routes: ["nats-route://route:pw@nats-2:6222", "nats-route://route:pw@nats-3:6222"]' in text
    route_tls = CLIENT_TLS.replace(", timeout", ', ca_file: "/p/ca.pem", timeout').strip()
    assert route_tls in text.split("cluster {", 1)[1]


def test_strings_are_quoted_as_nats_reads_them() -> None:
    """Quotes and backslashes escaped; anything else as it is (NATS knows no ``\\u`` escape)."""
    text = nats_conf(listen=None, store_dir='/home/zoë/a"b\\c', tls=None, auth="")
    assert text == 'jetstream { store_dir: "/home/zoë/a\\"b\\\\c" }\n'
