"""deploy/compose.yaml is a valid Compose file and deploys the whole platform.

No ``docker compose`` is needed: the file is validated against the Compose
Specification JSON Schema (tests/data/compose-spec.json, see tests/data/README.md),
and the ECHO-specific expectations are checked on the parsed YAML. No network access.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from echo_cli.devstack.platform import LEASED, REPLICATED
from echo_shared.ha_configs import PRIMARY_NAME
from echo_shared.redis_store import sentinel_address

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"

BROKERS = ("nats", "mosquitto", "redis")
CLOUD_SERVICES = {
    "master": "echo-master",
    "scheduler": "echo-scheduler",
    "registry": "echo-registry",
    "migrator": "echo-migrator",
}
AGENTS = {"edge-1": "edge", "edge-2": "edge", "fog-1": "fog", "cloud-1": "cloud"}
OBSERVABILITY = ("prometheus", "tempo", "loki", "grafana")
GRAFANA = DEPLOY / "grafana"


HA_ENV = DEPLOY / "ha.env"
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolated(value: Any, env: dict[str, str]) -> Any:
    """``${NAME:-default}`` resolved as Compose does (``$$`` is a literal ``$``)."""
    if isinstance(value, str):
        out = _VARIABLE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value.replace("$$", "\0"))
        return out.replace("\0", "$")
    if isinstance(value, list):
        return [interpolated(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolated(v, env) for k, v in value.items()}
    return value


def env_file(path: Path) -> dict[str, str]:
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return dict(ln.split("=", 1) for ln in lines if ln and not ln.startswith("#"))


def load_compose(env: dict[str, str]) -> dict[str, Any]:
    # safe_load resolves the YAML anchors and merge keys (<<) the file uses.
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return dict(interpolated(data, env))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose({})  # as `docker compose up` sees it, no variable set


@pytest.fixture(scope="module")
def ha() -> dict[str, dict[str, Any]]:
    """The services as `docker compose --env-file deploy/ha.env up` sees them (the ha profile)."""
    return dict(load_compose(env_file(HA_ENV))["services"])


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose["services"]
    assert isinstance(svcs, dict)
    return svcs


def _command(service: dict[str, Any]) -> list[str]:
    """The command's words (a ``sh -c`` script's too, split as the shell would)."""
    cmd = service.get("command", [])
    words = cmd.split() if isinstance(cmd, str) else list(cmd)
    if service.get("entrypoint") == ["sh", "-c"]:
        return shlex.split(" ".join(words))
    return words


def _flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd and cmd.index(name) + 1 < len(cmd) else None


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    # The schema declares "https://json-schema.org/draft-07/schema", a spelling of the
    # draft-07 URI that jsonschema's validator_for() does not recognise: name it here.
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors
    )


def test_all_platform_services_and_brokers_are_deployed(services: dict[str, dict[str, Any]]) -> None:
    for name in (*BROKERS, *CLOUD_SERVICES, *AGENTS, *OBSERVABILITY):
        assert name in services, f"service {name!r} missing"
    for name, script in CLOUD_SERVICES.items():
        assert _command(services[name])[0] == script, name
    agent_commands = [_command(s) for s in services.values() if _command(s)[:1] == ["echo-agent"]]
    assert len(agent_commands) >= len(AGENTS)


def test_agents_declare_device_id_and_tier(services: dict[str, dict[str, Any]]) -> None:
    for name, tier in AGENTS.items():
        cmd = _command(services[name])
        assert cmd[0] == "echo-agent"
        assert _flag(cmd, "--device-id") == name
        assert _flag(cmd, "--tier") == tier
    assert _flag(_command(services["edge-1"]), "--input-stream") == "taxi-feed"


def test_brokers_are_durable(services: dict[str, dict[str, Any]]) -> None:
    nats = _command(services["nats"])
    assert "-js" in nats, "NATS must run with JetStream"
    assert _flag(nats, "-sd") == "/data"
    redis = _command(services["redis"])
    assert _flag(redis, "--appendonly") == "yes", "Redis must run with the append-only file"
    conf = (DEPLOY / "mosquitto.conf").read_text(encoding="utf-8")
    settings = dict(
        line.split(None, 1) for line in conf.splitlines() if line.strip() and not line.startswith("#")
    )
    assert settings["persistence"].strip() == "true"
    assert settings["max_queued_messages"].strip() == "200000"
    assert settings["max_queued_bytes"].strip() == "0"
    assert settings["max_inflight_messages"].strip() == "1000"
    mounts = services["mosquitto"]["volumes"]
    assert "./mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in mounts


ONE_SHOT = ("pki", "fleet")  # jobs that run once and exit (depended on with service_completed_successfully)


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name in ONE_SHOT:
        assert services[name]["restart"] == "no", name
    for name, svc in services.items():
        if name in ONE_SHOT:
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), name


def test_master_health_endpoint_and_published_port(services: dict[str, dict[str, Any]]) -> None:
    master = services["master"]
    assert "/healthz" in " ".join(master["healthcheck"]["test"])
    assert any(str(p).endswith(":8099") for p in master["ports"])


def test_every_service_runs_replicated_and_the_leased_ones_are_named(
    services: dict[str, dict[str, Any]],
) -> None:
    """Two replicas of each service; those that elect a leader tell their replicas apart
    (``ECHO_REPLICA: auto``: the container's host name), and each master replica gets a host
    port of its own from a range (a fixed port would clash)."""
    for name in REPLICATED:
        svc = services[name]
        assert svc.get("deploy", {}).get("replicas", 1) >= 2, f"{name} runs one replica"
        if name in LEASED:
            assert svc["environment"].get("ECHO_REPLICA") == "auto", name
    (published,) = services["master"]["ports"]
    host, _, container = str(published).rpartition(":")
    _, _, last = host.partition("-")
    assert container == "8099" and last, f"one host port for two replicas: {published}"


def test_dependencies_exist_and_wait_for_healthy_brokers(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, how in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            if dep in BROKERS:
                assert how["condition"] == "service_healthy", f"{name} -> {dep}"
    for name in CLOUD_SERVICES:
        assert set(BROKERS) <= set(services[name]["depends_on"]), name


def test_configuration_comes_from_the_environment(services: dict[str, dict[str, Any]]) -> None:
    for name in CLOUD_SERVICES:
        env = services[name]["environment"]
        assert env["ECHO_NATS_URL"] == "tls://nats:4222"
        assert env["ECHO_MQTT_URL"] == "mqtts://mosquitto:8883"
        assert env["ECHO_REDIS_URL"] == "rediss://redis:6379/0"
        assert env["ECHO_CA_FILE"] == "/pki/ca.pem"
        assert env["ECHO_CREDENTIALS_FILE"] == f"/pki/identities/{name}.json"
        assert env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == "http://tempo:4318/v1/traces"
        assert env["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"] == "http://loki:3100/otlp/v1/logs"
        assert env["ECHO_METRICS_PORT"] == "9464"
    assert str(services["master"]["environment"]["ECHO_API_PORT"]) == "8099"
    for name, tier in AGENTS.items():
        env = services[name]["environment"]
        assert env["ECHO_API_URL"] == "https://master:8099"  # to enrol; then its own credentials
        # fog and cloud devices reach NATS; edge devices only MQTT
        assert ("ECHO_NATS_URL" in env) == (tier != "edge"), name


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    for svc in services.values():
        for mount in svc.get("volumes", []):
            source = str(mount).split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"volume {source!r} not declared"
    assert {"nats-data", "redis-data", "mosquitto-data"} <= declared


def test_echo_services_build_the_one_image(services: dict[str, dict[str, Any]]) -> None:
    echo = [services[n] for n in (*CLOUD_SERVICES, *AGENTS)]
    assert len({s["image"] for s in echo}) == 1
    for svc in echo:
        build = svc["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert (context / "pyproject.toml").is_file()
        assert (context / build["dockerfile"]).is_file()
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert "FROM python:3.11-slim" in dockerfile
    assert "requirements.lock" in dockerfile
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"


# ------------------------------------------------------------------ secure by default


def test_no_anonymous_access_anywhere(services: dict[str, dict[str, Any]]) -> None:
    conf = (DEPLOY / "mosquitto.conf").read_text(encoding="utf-8")
    lines = [line.split() for line in conf.splitlines() if line.strip() and not line.startswith("#")]
    assert ["allow_anonymous", "false"] in lines
    listeners = [words for words in lines if words[0] == "listener"]
    assert listeners == [["listener", "8883"]], "one listener, the TLS one"
    keys = {words[0] for words in lines}
    assert {"certfile", "keyfile", "plugin", "plugin_opt_config_file"} <= keys
    redis = _command(services["redis"])
    assert _flag(redis, "--port") == "0", "no plaintext Redis port"
    assert _flag(redis, "--tls-port") == "6379"
    assert _flag(redis, "--aclfile") == "/pki/redis/users.acl"
    nats = _command(services["nats"])
    assert _flag(nats, "-c") == "/pki/nats/server.conf"
    master = services["master"]["environment"]
    assert master["ECHO_API_TLS"] == "true"
    assert "https://" in " ".join(services["master"]["healthcheck"]["test"])


def test_the_bundle_is_made_first_and_owned_by_who_runs_each_part(
    services: dict[str, dict[str, Any]],
) -> None:
    pki = _command(services["pki"])
    assert pki[:3] == ["echoctl", "pki", "init"] and _flag(pki, "--dir") == "/pki"
    owners = dict(pki[i + 1].split("=", 1) for i, w in enumerate(pki) if w == "--owner")
    for name in (*BROKERS, *CLOUD_SERVICES):
        deps = services[name].get("depends_on", {})
        if name in BROKERS:
            assert deps["pki"]["condition"] == "service_completed_successfully", name
    for name in CLOUD_SERVICES:
        user = services[name]["user"]
        assert owners[name] == user, f"{name} runs as {user} but its credentials go to {owners[name]}"
        assert not user.startswith("0"), f"{name} must not run as root"
    assert len({services[n]["user"] for n in CLOUD_SERVICES}) == len(CLOUD_SERVICES), "one account each"
    hosts = [pki[i + 1] for i, w in enumerate(pki) if w == "--host"]
    assert {"mosquitto", "nats", "redis", *CLOUD_SERVICES, "prometheus", "grafana"} <= set(hosts)
    for name in ("prometheus", "grafana"):  # their own copies of what they read
        assert owners[name] == services[name]["user"], name


# ------------------------------------------------------------------ metrics, dashboards


def test_prometheus_scrapes_every_service_with_its_client_certificate(
    services: dict[str, dict[str, Any]],
) -> None:
    prom = services["prometheus"]
    cmd = _command(prom)
    assert "--web.config.file=/pki/prometheus/web.yml" in cmd, "its API: HTTPS and a login"
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = cfg["scrape_configs"]
    assert job["scheme"] == "https"
    assert job["tls_config"]["cert_file"] == "/pki/prometheus/client.pem"
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"{name}:9464" for name in CLOUD_SERVICES}
    for name in CLOUD_SERVICES:
        env = services[name]["environment"]
        assert env["ECHO_METRICS_CERT_FILE"] == "/pki/server.pem"
        assert env["ECHO_METRICS_KEY_FILE"].startswith("/pki/")


def test_grafana_has_no_default_password_and_its_provisioning_is_shipped(
    services: dict[str, dict[str, Any]],
) -> None:
    g = services["grafana"]
    env = g["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/pki/grafana/admin.password"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_SERVER_PROTOCOL"] == "https"
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in g["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards/echo:ro" in g["volumes"]
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "echo.yaml").read_text())[
        "datasources"
    ]
    by_type = {s["type"]: s for s in sources}
    assert set(by_type) == {"prometheus", "tempo", "loki"}
    prom = by_type["prometheus"]
    assert prom["url"].startswith("https://") and prom["basicAuth"] is True
    assert prom["secureJsonData"]["basicAuthPassword"].startswith("$__file{")  # from a file, not here
    uids = {s["uid"] for s in sources}
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] in uids, f"{path.name}: {panel['title']}"
    titles = {json.loads(p.read_text())["title"] for p in (GRAFANA / "dashboards").glob("*.json")}
    assert titles == {"ECHO overview", "ECHO dataflow"}


def test_no_secret_in_the_environment(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        env = svc.get("environment") or {}
        for key, value in env.items():
            if any(w in key for w in ("PASSWORD", "TOKEN", "SECRET", "CREDENTIALS", "KEY")):
                assert str(value).startswith("/"), f"{name}: {key} must name a file, not hold a secret"


def test_agents_enrol_with_a_token_file_and_keep_their_identity(services: dict[str, dict[str, Any]]) -> None:
    fleet = " ".join(_command(services["fleet"]))
    for name in AGENTS:
        cmd = _command(services[name])
        assert _flag(cmd, "--enrol-token-file") == f"/fleet/{name}.token"
        assert _flag(cmd, "--state-dir") == "/var/lib/echo/state"
        assert f"{name}-state:/var/lib/echo/state" in services[name]["volumes"]
        assert services[name]["depends_on"]["fleet"]["condition"] == "service_completed_successfully"
        assert name in fleet


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        image = str(svc["image"])
        if "build" in svc:
            continue  # built here
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: pin {image} to a version"


HA_SERVICES = ("nats-2", "nats-3", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3")


def test_the_ha_profile_adds_a_nats_cluster_and_redis_sentinel(
    services: dict[str, dict[str, Any]], ha: dict[str, dict[str, Any]]
) -> None:
    """`--env-file deploy/ha.env` turns the profile on and points every service at the NATS
    cluster and Redis' sentinels; without it, nothing of the profile runs."""
    for name, svc in services.items():
        assert (svc.get("profiles") == ["ha"]) == (name in HA_SERVICES), name
    assert env_file(HA_ENV)["COMPOSE_PROFILES"] == "ha"
    pki = _command(ha["pki"])
    assert "--ha" in pki
    hosts = {pki[i + 1] for i, a in enumerate(pki) if a == "--host"}
    assert set(HA_SERVICES) <= hosts, "the server certificate must name every node"
    assert _flag(_command(ha["nats"]), "-c") == "/pki/nats/cluster-1.conf"
    assert _flag(_command(ha["nats-2"]), "-c") == "/pki/nats/cluster-2.conf"
    assert _flag(_command(ha["nats-3"]), "-c") == "/pki/nats/cluster-3.conf"
    assert _flag(_command(services["nats"]), "-c") == "/pki/nats/server.conf"  # one node otherwise
    for name in CLOUD_SERVICES:
        env = ha[name]["environment"]
        assert env["ECHO_NATS_URL"].split(",") == [f"tls://{n}:4222" for n in ("nats", "nats-2", "nats-3")]
        assert env["ECHO_JETSTREAM_REPLICAS"] == "3"
        sentinels, primary, _ = sentinel_address(env["ECHO_REDIS_URL"])
        assert env["ECHO_REDIS_URL"].startswith("rediss+sentinel://") and primary == PRIMARY_NAME
        assert [h for h, _ in sentinels] == ["sentinel-1", "sentinel-2", "sentinel-3"]
        assert services[name]["environment"]["ECHO_REDIS_URL"] == "rediss://redis:6379/0"
    for name in ("redis", "redis-replica"):  # either may be a replica after a failover
        script = " ".join(_command(ha[name]))
        # its configuration: the primary's login, in its volume (the sentinels rewrite it)
        assert "cp /pki/redis/replication.conf /data/redis.conf" in script
        assert _flag(_command(ha[name]), "redis-server") == "/data/redis.conf"
        assert _flag(_command(ha[name]), "--replica-announce-ip") == name
        assert ha[name]["user"] == "999:999"
    assert "replicaof redis 6379" in " ".join(_command(ha["redis-replica"]))
    assert "replicaof" not in " ".join(_command(ha["redis"]))
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        assert ha[name]["user"] == "999:999", "a sentinel does not run as root"
