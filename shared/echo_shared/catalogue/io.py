"""Catalogue entries of the io operators: files, directories, logs, MQTT and NATS.

(``io.generate`` and ``io.file_sink`` live with the core family.) Paths name files on
the device that runs the task; ``~`` is expanded. Broker URLs default to the device's own
brokers (the agent's ``ECHO_MQTT_URL`` / ``ECHO_NATS_URL``).
"""

from __future__ import annotations

import codecs
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import AfterValidator, Field, field_validator

from .base import Kind, OperatorConfig, OperatorInfo, Role, entries

MIB = 1 << 20


def _codec(name: str) -> str:
    try:
        codecs.lookup(name)
    except LookupError:
        raise ValueError(f"unknown text encoding {name!r}") from None
    return name


def _mqtt_url(url: str | None) -> str | None:
    if url is not None:  # the rules of echo_shared.mqtt.parse_url (not imported: it loads paho)
        u = urlparse(url)
        try:
            ok = u.scheme in {"mqtt", "mqtts", "tcp"} and bool(u.hostname) and (u.port or 1) > 0
        except ValueError:  # a port that is not a number
            ok = False
        if not ok:
            raise ValueError(f"not an MQTT URL: {url!r} (expected mqtt://host:port)")
    return url


def _nats_url(url: str | None) -> str | None:
    if url is not None:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in {"nats", "tls", "ws", "wss"} or not rest:
            raise ValueError(f"not a NATS URL: {url!r} (expected nats://host:port)")
    return url


DevicePath = Annotated[str, Field(min_length=1, description="a path on the device that runs the task")]
Encoding = Annotated[str, Field(description="text encoding of the file"), AfterValidator(_codec)]
MaxLine = Annotated[
    int, Field(ge=1, le=64 * MIB, description="a longer line fails the task (bytes, before decoding)")
]
Rate = Annotated[float, Field(ge=0, description="items per second; 0 = as fast as possible")]
MqttUrl = Annotated[
    str | None,
    Field(description="mqtt://host:port; default: the MQTT broker of the task's device"),
    AfterValidator(_mqtt_url),
]
NatsUrl = Annotated[
    str | None,
    Field(description="nats://host:port; default: the NATS server of the task's device"),
    AfterValidator(_nats_url),
]
ConnectTimeout = Annotated[
    float, Field(gt=0, le=120, description="seconds to reach the broker before the task fails")
]
Format = Annotated[
    Literal["json", "text"],
    Field(description="json: a JSON object per message; text: the message is {'payload': <text>}"),
]


class FileSourceConfig(OperatorConfig):
    path: DevicePath
    rate: Rate = 0.0
    skip: int = Field(default=0, ge=0, description="header lines to skip (not emitted, not counted in seq)")
    encoding: Encoding = "utf-8"
    max_line_bytes: MaxLine = MIB


class DirSourceConfig(OperatorConfig):
    path: DevicePath
    pattern: str = Field(
        default="*",
        min_length=1,
        description="glob matched against file names ('*.csv'); names starting with '.' match only "
        "a pattern starting with '.'",
    )
    recursive: bool = Field(default=False, description="also scan subdirectories")
    rate: Rate = 0.0
    poll: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="seconds between scans to keep watching for new files; default: scan once and finish",
    )
    settle: float = Field(
        default=1.0,
        ge=0,
        le=3600,
        description="when polling: a file is emitted once unchanged between two scans, or untouched "
        "for this many seconds (so files still being written are not sent half done)",
    )
    keep: Literal[True] = Field(default=True, description="source files are never deleted (only true)")

    @field_validator("pattern")
    @classmethod
    def _name_pattern(cls, v: str) -> str:
        if "/" in v or "\\" in v:
            raise ValueError("the pattern matches file names, without '/' (use recursive: true)")
        return v


class DirSinkConfig(OperatorConfig):
    path: DevicePath
    create: bool = Field(default=True, description="create the directory if it is missing")
    conflict: Literal["replace", "fail", "rename"] = Field(
        default="rename",
        description="a file of that name exists: replace it, fail the task, or store as name-1.ext, ...",
    )


TABLE_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"


class TableSinkConfig(OperatorConfig):
    path: DevicePath = Field(description="SQLite database file on the device (created if missing)")
    table: str = Field(
        default="records", pattern=TABLE_NAME, description="table of the rows (letters, digits, '_')"
    )
    key: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None,
        min_length=1,
        description="fields that identify a row: a record with the same values replaces it (as Azure "
        "Table's insert-or-replace); none: every record is a new row",
    )


class SplitLinesConfig(OperatorConfig):
    skip: int = Field(default=0, ge=0, description="header lines of each file to skip")
    encoding: Encoding = "utf-8"
    max_line_bytes: MaxLine = MIB


class LogSinkConfig(OperatorConfig):
    every: int = Field(default=1, ge=1, description="log one record in every N (the first always)")
    max_chars: int = Field(default=2000, ge=20, le=1_000_000, description="longer records are cut")


class MqttSourceConfig(OperatorConfig):
    url: MqttUrl = None
    username: str | None = Field(
        default=None, description="login at a broker of your own (config.url); the device's own broker: none"
    )
    password_file: str | None = Field(
        default=None, description="a file on the device holding the password (never the password itself)"
    )
    ca_file: str | None = Field(default=None, description="CA certificate (on the device) of a TLS url")
    topic: str = Field(min_length=1, description="topic filter; '+' and '#' wildcards allowed")
    qos: Literal[0, 1] = 1
    format: Format = "json"
    topic_field: str | None = Field(default=None, description="record field that gets the message topic")
    persistent: bool = Field(
        default=False,
        description="keep a broker session named after the task, so messages published while the "
        "task is away (restarting, moving) wait for it (QoS 1)",
    )
    max_pending: int = Field(
        default=10_000,
        ge=1,
        le=65_535,
        description="messages received but not yet emitted; beyond it the oldest are dropped",
    )
    connect_timeout: ConnectTimeout = 10.0

    @field_validator("topic")
    @classmethod
    def _filter(cls, v: str) -> str:
        levels = v.split("/")
        for i, level in enumerate(levels):
            if "#" in level and (level != "#" or i != len(levels) - 1):
                raise ValueError("'#' must be a whole last level of the topic filter ('a/#')")
            if "+" in level and level != "+":
                raise ValueError("'+' must be a whole level of the topic filter ('a/+/c')")
        return v


class MqttSinkConfig(OperatorConfig):
    url: MqttUrl = None
    username: str | None = Field(
        default=None, description="login at a broker of your own (config.url); the device's own broker: none"
    )
    password_file: str | None = Field(
        default=None, description="a file on the device holding the password (never the password itself)"
    )
    ca_file: str | None = Field(default=None, description="CA certificate (on the device) of a TLS url")
    topic: str = Field(min_length=1, description="topic to publish on (no wildcards)")
    qos: Literal[0, 1] = 1
    format: Format = "json"
    field: str = Field(default="payload", min_length=1, description="text format: the field published")
    retain: bool = False
    connect_timeout: ConnectTimeout = 10.0
    publish_timeout: float = Field(
        default=30.0, gt=0, le=600, description="seconds the broker may take to accept a batch"
    )

    @field_validator("topic")
    @classmethod
    def _plain(cls, v: str) -> str:
        if "+" in v or "#" in v:
            raise ValueError("a topic to publish on has no wildcards ('+', '#')")
        return v


def _subject(v: str, *, wildcards: bool) -> str:
    tokens = v.split(".")
    if any(not t or any(c.isspace() for c in t) for t in tokens):
        raise ValueError(f"not a NATS subject: {v!r} (dot-separated tokens, no spaces)")
    if not wildcards and any(t in ("*", ">") for t in tokens):
        raise ValueError("a subject to publish on has no wildcards ('*', '>')")
    if ">" in tokens[:-1]:
        raise ValueError("'>' must be the last token of the subject")
    return v


class NatsSourceConfig(OperatorConfig):
    url: NatsUrl = None
    username: str | None = Field(
        default=None, description="login at a broker of your own (config.url); the device's own broker: none"
    )
    password_file: str | None = Field(
        default=None, description="a file on the device holding the password (never the password itself)"
    )
    ca_file: str | None = Field(default=None, description="CA certificate (on the device) of a TLS url")
    subject: str = Field(min_length=1, description="subject; '*' and '>' wildcards allowed")
    queue: str | None = Field(default=None, description="queue group (replicas share the messages)")
    format: Format = "json"
    subject_field: str | None = Field(default=None, description="record field that gets the subject")
    max_pending: int = Field(
        default=10_000, ge=1, le=1_000_000, description="messages waiting; beyond it new ones are dropped"
    )
    connect_timeout: ConnectTimeout = 10.0

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        return _subject(v, wildcards=True)


class NatsSinkConfig(OperatorConfig):
    url: NatsUrl = None
    username: str | None = Field(
        default=None, description="login at a broker of your own (config.url); the device's own broker: none"
    )
    password_file: str | None = Field(
        default=None, description="a file on the device holding the password (never the password itself)"
    )
    ca_file: str | None = Field(default=None, description="CA certificate (on the device) of a TLS url")
    subject: str = Field(min_length=1, description="subject to publish on (no wildcards)")
    format: Format = "json"
    field: str = Field(default="payload", min_length=1, description="text format: the field published")
    connect_timeout: ConnectTimeout = 10.0
    publish_timeout: float = Field(
        default=30.0, gt=0, le=600, description="seconds the server may take to confirm a batch (flush)"
    )

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        return _subject(v, wildcards=False)


CATALOGUE = entries(
    OperatorInfo(
        "io.file_source",
        Role.source,
        FileSourceConfig,
        stateful=True,
        summary="emit each line of a file as {seq, line}",
    ),
    OperatorInfo(
        "io.dir_source",
        Role.source,
        DirSourceConfig,
        stateful=True,
        summary="emit one file record per file of a directory (once, or polling)",
        produces=Kind.files,
    ),
    OperatorInfo(
        "io.dir_sink",
        Role.sink,
        DirSinkConfig,
        summary="store each received file in a directory",
        consumes=Kind.files,
    ),
    OperatorInfo(
        "core.split_lines",
        Role.transform,
        SplitLinesConfig,
        summary="each line of each received file as {name, n, line}",
        consumes=Kind.files,
    ),
    OperatorInfo("io.log_sink", Role.sink, LogSinkConfig, summary="log records at info level"),
    OperatorInfo(
        "io.table_sink",
        Role.sink,
        TableSinkConfig,
        summary="store records as rows of a table in a local SQLite database (a column per field)",
    ),
    OperatorInfo(
        "io.mqtt_source", Role.source, MqttSourceConfig, summary="records from an MQTT topic (endless)"
    ),
    OperatorInfo("io.mqtt_sink", Role.sink, MqttSinkConfig, summary="publish records on an MQTT topic"),
    OperatorInfo(
        "io.nats_source", Role.source, NatsSourceConfig, summary="records from a NATS subject (endless)"
    ),
    OperatorInfo("io.nats_sink", Role.sink, NatsSinkConfig, summary="publish records on a NATS subject"),
)
