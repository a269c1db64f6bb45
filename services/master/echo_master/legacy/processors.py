"""The processor classes of the original ECHO (NiFi processors) as ECHO operators.

A class is known by its simple name (the part after the last ``.``). Each builder turns
one processor into a short chain of task drafts (usually one; ``EdgentFilter_RBI`` gives
three) and says what each draft consumes and produces, so the graph stage
(``mapping.py``) can pick the edge models and insert adapters. A builder sees what
arrives from upstream (records or files) and which classes are downstream.

- GetFile: ``io.file_source`` over ``Input Directory``/``File Filter`` when the filter names
  one file and the downstream takes records; else ``io.dir_source`` (files);
- GetFileBatch: ``io.dir_source`` (files, on file edges);
- PutFile, PutFileBatch: after files ``io.dir_sink`` into ``Directory``; after records
  ``io.file_sink`` to ``Directory/<task>.jsonl``;
- SplitText: ``core.split_lines`` (files -> one record per line);
- UpdateAttribute: ``core.map`` setting every non-null property as a string field
  (``${field}`` copies a field); ``Delete Attributes Expression`` (names joined by ``|``)
  becomes ``drop``;
- PublishMQTT: ``io.mqtt_sink`` (``tcp://`` -> ``mqtt://``; QoS 2 -> 1; after CSVSenMLParser
  it publishes the SenML text, as NiFi published the flowfile's content; no credentials);
- ExecuteProcess, ExecuteProcessBatch: ``process`` with ``Command`` + ``Command Arguments``
  split by ``Argument Delimiter``; mode ``file`` after files (``{input}`` appended when the
  arguments lack it), else ``lines`` (``batch`` for ExecuteProcessBatch);
- SenMLParser, Interpolation, JoinETL, AnnotateETL, CSVSenMLParser: ``etl.senml_parse``,
  ``etl.interpolate``, ``etl.join``, ``etl.annotate``, ``etl.csv_to_senml``;
- EdgentFilter_RBI: ``etl.range_filter`` -> ``etl.bloom_filter`` -> ``etl.interpolate``
  (RIoTBench's taxi ranges; ``Bloom Filter File Path`` is read as a file of ids);
- ETLGetFile (RIoTBench's source): as GetFile, or ``io.file_source`` of the one file a
  ``File Path`` / ``Input File`` property names;
- InsertAzure: ``io.table_sink`` on a cloud device: the rows go to a table named after
  ``Azure Table Name`` in a local SQLite file, keyed by taxi id + hack licence (insert or
  replace, as the original's TaxiTrip entity was);
- FilterImagesEdgent: ``core.filter`` keeping detections whose class is ``Object Class``;
- JoinFiles, JoinTF: ``core.passthrough`` after records; no task at all after files (the
  files they gathered from a shared directory already travel on ECHO's file edges);
- LogAttribute: ``io.log_sink``.

Paths in properties pass through unchanged: the operators check them on the device in
``open()`` and a missing one fails the task with a reason naming the path and device.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable
from typing import Any

from echo_shared.models import Tier
from echo_shared.operators import Kind

from .drafts import Built, Draft, Env
from .nifi import NIFI_ANY, glob_of, literal_name, mqtt_url, split_args

R, F = Kind.records, Kind.files

# the valid ranges RIoTBench's ETL uses with the taxi data (EdgentFilter_RBI hard-coded them)
TAXI_RANGES: dict[str, tuple[float, float]] = {
    "trip_time_in_secs": (140.0, 3155.0),
    "trip_distance": (1.37, 29.86),
    "fare_amount": (6.00, 201.00),
    "tip_amount": (0.65, 38.55),
    "tolls_amount": (2.50, 18.00),
    "surcharge": (0.1, 1.0),
}
TAXI_ID = "taxi_identifier"

# downstream classes that take a file as a file (GetFile then emits files)
FILE_CONSUMERS = {
    "SplitText",
    "PutFile",
    "PutFileBatch",
    "ExecuteProcess",
    "ExecuteProcessBatch",
    "JoinFiles",
}
# relationships that carry a processor's output, per class (default: success)
OUTPUTS: dict[str, set[str]] = {"SplitText": {"splits"}}


Builder = Callable[[Env], Built]


# ------------------------------------------------------------------------------- sources


MAX_POLL = 3600.0  # io.dir_source polls at most this far apart


# the properties a RIoTBench source (ETLGetFile) may name its one input file by
SINGLE_FILE = ("File Path", "Input File", "Input File Path", "File Name")


def etl_get_file(env: Env) -> Built:
    """RIoTBench's ETLGetFile: GetFile that also stamps the experiment's message ids. Read as
    GetFile (``Input Directory`` + ``File Filter``), or one file named by a property."""
    for name in SINGLE_FILE:
        path = env.prop(name)
        if path is not None:
            return Built([Draft("io.file_source", {"path": path}, None, R)])
    if env.prop("Input Directory") is None:
        env.problem(
            env.loc("Input Directory"),
            f"{env.cls} needs the property 'Input Directory' (with 'File Filter'), or one of "
            + ", ".join(repr(n) for n in SINGLE_FILE),
            "missing",
        )
        return Built([Draft("io.file_source", {"path": "?"}, None, R)])
    return get_file(env)


def get_file(env: Env) -> Built:
    directory = env.require("Input Directory")
    pattern = env.prop("File Filter") or NIFI_ANY
    recursive = env.flag("Recurse Subdirectories", True)
    batch = env.cls == "GetFileBatch"
    period = env.scheduling_period()
    interval = env.duration("Polling Interval")
    poll = max(period or 0.0, interval or 0.0)
    if not env.flag("Keep Source File", False):
        env.note("Keep Source File is false, but ECHO never deletes the files it reads")
    if not env.flag("Ignore Hidden Files", True):
        env.note("hidden files are read only when File Filter starts with '.'")
    name = literal_name(pattern)
    wants_files = batch or name is None or any(s in FILE_CONSUMERS for s in env.successors)
    if not wants_files and name is not None:
        if period:
            env.note(
                f"schedulingPeriod {period:g} s: ECHO reads {name} once, line by line, as fast as "
                f"the dataflow takes it (NiFi re-read the kept file every period)"
            )
        return Built([Draft("io.file_source", {"path": posixpath.join(directory, name)}, None, R)])
    glob = name or glob_of(pattern)
    if glob is None:
        env.problem(
            env.loc("File Filter"),
            f"{pattern!r} has no equivalent file name pattern: ECHO matches names with globs "
            f"such as '*.csv' or 'img_??.png' (a regular expression may use . .* .+ [] and \\.)",
        )
        glob = "*"
    config: dict[str, Any] = {"path": directory, "pattern": glob, "recursive": recursive}
    if poll > MAX_POLL:
        env.note(f"polls every {MAX_POLL:g} s at most (asked: {poll:g} s)")
        poll = MAX_POLL
    if poll > 0:
        config["poll"] = poll
    else:
        env.note("no schedulingPeriod or Polling Interval: the directory is read once")
    if batch and env.prop("Batch Size") is not None:
        env.note("Batch Size: files travel one by one on file edges")
    return Built([Draft("io.dir_source", config, None, F)])


# --------------------------------------------------------------------------------- sinks

CONFLICTS = {"replace": "replace", "ignore": "rename", "fail": "fail"}


def put_file(env: Env) -> Built:
    directory = env.require("Directory")
    if env.inputs == {F}:
        strategy = (env.prop("Conflict Resolution Strategy") or "fail").strip().lower()
        if strategy not in CONFLICTS:
            env.problem(
                env.loc("Conflict Resolution Strategy"),
                f"expected replace, ignore or fail, got {strategy!r}",
            )
        if strategy == "ignore":
            env.note("Conflict Resolution Strategy ignore: ECHO keeps both files (the new one renamed)")
        config = {
            "path": directory,
            "conflict": CONFLICTS.get(strategy, "fail"),
            "create": env.flag("Create Missing Directories", True),
        }
        return Built([Draft("io.dir_sink", config, F, None)])
    if len(env.inputs) > 1:
        env.problem(
            f"processors[{env.index}]",
            f"{env.cls} receives both files and records; give it one kind of input",
            "pairing",
        )
    path = posixpath.join(directory, f"{env.base_id}.jsonl")
    env.note(f"receives records: they are appended as JSON lines to {path}")
    return Built([Draft("io.file_sink", {"path": path}, R, None)])


def publish_mqtt(env: Env) -> Built:
    uri, topic = env.require("Broker URI"), env.require("Topic")
    qos = env.integer("Quality of Service(QoS)")
    if qos is not None and qos > 2:
        env.problem(env.loc("Quality of Service(QoS)"), f"expected 0, 1 or 2, got {qos}")
    config: dict[str, Any] = {"url": mqtt_url(uri), "topic": topic}
    if qos == 2:
        env.note("QoS 2 is published as QoS 1 (ECHO's sinks publish at most once-acknowledged)")
    if qos is not None and qos <= 2:
        config["qos"] = min(qos, 1)
    config["retain"] = env.flag("Retain Message", False)
    if env.predecessors and all(c == "CSVSenMLParser" for c in env.predecessors):
        config.update(format="text", field="senml")  # the SenML text, as NiFi published its content
    for name in ("Username", "Password"):
        if env.prop(name) is not None:
            env.note(f"{name} is not used: the broker must accept the device's connection as it is")
    if env.prop("Client ID") is not None:
        env.note("Client ID is not used: ECHO names the MQTT session after the task")
    return Built([Draft("io.mqtt_sink", config, R, None)])


# where InsertAzure's rows go on the cloud device (its Azure Table, kept locally)
AZURE_TABLES = "~/.local/share/echo/azure-tables.sqlite"
# InsertAzure's TaxiTrip entity: RowKey the taxi, PartitionKey the hack licence
AZURE_KEY = ["taxi_identifier", "hack_license"]


def insert_azure(env: Env) -> Built:
    name = env.prop("Azure Table Name") or "echo"
    table = re.sub(r"[^A-Za-z0-9_]", "_", name)[:63]
    if not re.match(r"[A-Za-z_]", table):
        table = "t_" + table[:61]
    env.prop("Azure storage Connection String")
    env.note(
        f"no Azure here: rows go to table {table!r} of {AZURE_TABLES} on a cloud device, keyed "
        f"by {' + '.join(AZURE_KEY)} (insert or replace, as InsertAzure did)"
    )
    config = {"path": AZURE_TABLES, "table": table, "key": AZURE_KEY}
    return Built([Draft("io.table_sink", config, R, None, tier=Tier.cloud)])


def log_attribute(env: Env) -> Built:
    level = (env.prop("Log Level") or "info").strip().lower()
    if level != "info":
        env.note(f"Log Level {level}: ECHO logs records at info level")
    env.prop("Log prefix")
    if env.flag("Log Payload", False):
        env.note("Log Payload: ECHO logs the whole record")
    return Built([Draft("io.log_sink", {}, R, None)])


# ---------------------------------------------------------------------------- transforms


def split_text(env: Env) -> Built:
    count = env.integer("Line Split Count", low=1)
    if count is not None and count > 1:
        env.note(f"Line Split Count {count}: ECHO emits one record per line")
    skip = env.integer("Header Line Count")
    if F not in env.inputs:
        env.note("receives records, which are lines already: forwarded unchanged")
        return Built([Draft("core.passthrough", {}, R, R)])
    config = {"skip": skip} if skip else {}
    return Built([Draft("core.split_lines", config, F, R)])


NIFI_SETTINGS = {"Delete Attributes Expression", "Store State", "Stateful Variables Initial Value"}
_EL_FIELD = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_.]*)\}$")


def update_attribute(env: Env) -> Built:
    sets: dict[str, str] = {}
    for key, value in env.doc.properties.items():
        if key in NIFI_SETTINGS or key.startswith("canonical-value-lookup") or value is None:
            continue
        env.used.add(key)
        ref = _EL_FIELD.match(value.strip())
        if ref:
            sets[key] = f"record[{json.dumps(ref.group(1))}]"
        else:
            if "${" in value:
                env.note(f"property {key!r}: NiFi expression language is not evaluated; set as text")
            sets[key] = json.dumps(value)
    drop: list[str] = []
    expr = env.prop("Delete Attributes Expression")
    if expr is not None:
        names = [n.strip() for n in expr.split("|")]
        if not all(re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in names):
            env.problem(
                env.loc("Delete Attributes Expression"),
                "only a field name or names joined by '|' can be deleted (not a regular expression)",
            )
        else:
            drop = [n for n in names if n not in sets]
    if not sets and not drop:
        env.note("sets no field: records pass unchanged")
        return Built([Draft("core.passthrough", {}, R, R)])
    config: dict[str, Any] = {"set": sets} if sets else {}
    if drop:
        config["drop"] = drop
    return Built([Draft("core.map", config, R, R)])


PROCESS_PROPS = {
    "Batch Size",
    "Command",
    "Command Arguments",
    "Argument Delimiter",
    "Working Directory",
    "Batch Duration",
    "Redirect Error Stream",
}


def execute_process(env: Env) -> Built:
    command = env.require("Command")
    delimiter = env.doc.properties.get("Argument Delimiter") or " "
    env.used.add("Argument Delimiter")
    if len(delimiter) != 1:
        env.problem(env.loc("Argument Delimiter"), f"must be one character, got {delimiter!r}")
        delimiter = delimiter[:1] or " "
    argv = [command, *split_args(env.prop("Command Arguments"), delimiter)]
    batch = env.cls == "ExecuteProcessBatch"
    config: dict[str, Any] = {}
    if F in env.inputs:  # one run per file; its stdout lines are records
        if len(env.inputs) > 1:
            env.problem(
                f"processors[{env.index}]",
                f"{env.cls} receives both files and records; give it one kind of input",
                "pairing",
            )
        if not any("{input}" in a for a in argv):
            argv.append("{input}")
            env.note("runs once per input file, whose local path is appended as the last argument")
        config["mode"] = "file"
    else:
        config["mode"] = "batch" if batch else "lines"
    config["command"] = argv
    cwd = env.prop("Working Directory")
    if cwd is not None:
        config["cwd"] = cwd
    seconds = env.duration("Batch Duration")
    env.flag("Redirect Error Stream", False)
    extra = {k: v for k, v in env.doc.properties.items() if k not in PROCESS_PROPS and v is not None}
    if extra:
        config["env"] = extra  # NiFi's dynamic properties are environment variables
        env.used.update(extra)
    count = env.integer("Batch Size", low=1) if batch else None
    if seconds is not None and count is None:
        env.note("Batch Duration applies with a Batch Size: ECHO batches by count, closing early by time")
    consumes = F if config["mode"] == "file" else R
    return Built([Draft("process", config, consumes, R)], count, seconds)


# ------------------------------------------------------------------------------------ ETL


def senml_parser(env: Env) -> Built:
    return Built([Draft("etl.senml_parse", {}, R, R)])


def interpolate_config() -> dict[str, Any]:
    return {"fields": list(TAXI_RANGES), "key": TAXI_ID}


def edgent_filter_rbi(env: Env) -> Built:
    bloom = env.require("Bloom Filter File Path")
    env.note(
        "expands into range filter -> bloom filter -> interpolation; the Bloom filter file is read "
        "as ids, one per line (the original's Java-serialised filter cannot be read)"
    )
    ranges = {k: list(v) for k, v in TAXI_RANGES.items()}
    return Built(
        [
            Draft("etl.range_filter", {"ranges": ranges}, R, R, suffix="range"),
            Draft("etl.bloom_filter", {"field": TAXI_ID, "ids_file": bloom}, R, R, suffix="bloom"),
            Draft("etl.interpolate", interpolate_config(), R, R, suffix="interpolate"),
        ]
    )


def interpolation(env: Env) -> Built:
    return Built([Draft("etl.interpolate", interpolate_config(), R, R)])


def join_etl(env: Env) -> Built:
    return Built([Draft("etl.join", {"schema_file": env.require("Join Schema File Path")}, R, R)])


def annotate_etl(env: Env) -> Built:
    return Built([Draft("etl.annotate", {"metadata_file": env.require("Metadata File Path")}, R, R)])


def csv_senml_parser(env: Env) -> Built:
    schema = env.prop("Annotation Schema File Path")
    return Built([Draft("etl.csv_to_senml", {"schema_file": schema} if schema else {}, R, R)])


# ---------------------------------------------------------------------------------- video


def filter_images(env: Env) -> Built:
    wanted = json.dumps(env.require("Object Class"))
    where = f'coalesce(label, record["class"]) == {wanted}'
    return Built([Draft("core.filter", {"where": where}, R, R)])


def join_files(env: Env) -> Built:
    for name in ("Directory", "Batch Size", "Wait Time", "Object Class"):
        env.prop(name)
    if F in env.inputs:
        env.note(f"{env.cls} has no task: the files it gathered from a directory already travel on the edges")
        return Built([])
    env.note(f"{env.cls} forwards its input: in ECHO the data travels on the edges")
    return Built([Draft("core.passthrough", {}, R, R)])


BUILDERS: dict[str, Builder] = {
    "GetFile": get_file,
    "ETLGetFile": etl_get_file,
    "GetFileBatch": get_file,
    "PutFile": put_file,
    "PutFileBatch": put_file,
    "SplitText": split_text,
    "UpdateAttribute": update_attribute,
    "PublishMQTT": publish_mqtt,
    "ExecuteProcess": execute_process,
    "ExecuteProcessBatch": execute_process,
    "SenMLParser": senml_parser,
    "EdgentFilter_RBI": edgent_filter_rbi,
    "Interpolation": interpolation,
    "JoinETL": join_etl,
    "AnnotateETL": annotate_etl,
    "CSVSenMLParser": csv_senml_parser,
    "InsertAzure": insert_azure,
    "FilterImagesEdgent": filter_images,
    "JoinFiles": join_files,
    "JoinTF": join_files,
    "LogAttribute": log_attribute,
}
