"""The ETL operators of RIoTBench (catalogue: ``echo_shared.catalogue.etl``).

The RIoTBench ETL dataflow (Shukla, Chaturvedi, Simmhan 2017) over the NYC taxi feed is::

    senml_parse -> range_filter -> bloom_filter -> interpolate -> join -> annotate -> csv_to_senml

Record shape (the design choice). Records are flat dicts, one field per SenML observation:
``etl.senml_parse`` turns ``{"seq": 7, "line": "<ts>,<SenML>"}`` into
``{"seq": 7, "timestamp": bt, "taxi_identifier": "...", "trip_time_in_secs": 1440.0, ...}``,
as the original ECHO NiFi flow did (its SenMLParser emitted one map per line). With
``split: true`` it emits one record per observation instead, as RIoTBench's Storm topology
does (``{"seq", "timestamp", "taxi_identifier", <one observation>}``); the filters and
interpolation work unchanged on such partial records (they act on the fields a record has),
and ``etl.join`` reassembles them by message id (``seq``) once every schema field arrived.
On whole records the join only completes and orders them by the schema.

Missing values are ``null``. ``etl.range_filter`` turns a value outside its range (or not a
number) into ``null`` by default — RIoTBench treats it as missing — and ``etl.interpolate``
fills a ``null`` with the mean of the recent valid values of that field (per key). A field
that is absent from a record is not missing, just not this record's observation: no
operator here adds or fills it (``etl.join`` excepted: it adds what never arrived as null
when it gives a message up with ``on_incomplete: emit``).

Side files (schema, metadata, id lists) are read once in ``open()``; a missing or unusable
one fails the task there, with a message naming the option, the path and the device.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any

import orjson

from echo_shared.catalogue.etl import (
    AnnotateConfig,
    BloomFilterConfig,
    CsvToSenmlConfig,
    InterpolateConfig,
    JoinConfig,
    RangeFilterConfig,
    SenmlParseConfig,
)

from .base import Operator, Record, TaskContext
from .etl.bloom import BloomFilter
from .etl.errors import BadRecord, DeviceFileError, OperatorError
from .etl.files import read_lines
from .etl.schema import Schema, load_schema
from .etl.senml import SenmlError, dumps, parse_line
from .etl.values import key_text, number

log = logging.getLogger(__name__)


class SenmlParse(Operator):
    """``etl.senml_parse``: one SenML line -> one record (or one record per observation)."""

    config: SenmlParseConfig

    def __init__(self, config: SenmlParseConfig) -> None:
        super().__init__(config)
        self.skipped = 0

    def process(self, record: Record) -> Iterable[Record] | None:
        cfg = self.config
        raw = record.get(cfg.field)
        if not isinstance(raw, str):
            return self._bad(record, f"the record has no text field {cfg.field!r}")
        if not raw.strip():
            return None  # a blank line is no message
        try:
            msg = parse_line(raw)
        except SenmlError as err:
            return self._bad(record, f"{err}: {raw[:80]!r}")
        base = {k: record[k] for k in cfg.keep if k in record}
        base[cfg.time_field] = msg.time
        if not cfg.split:
            out = dict(base)
            for e in msg.entries:
                out[e.name] = e.value
            return (out,)
        ident = next((e.value for e in msg.entries if e.name == cfg.id_field), None)
        if ident is None:
            return self._bad(record, f"the message has no {cfg.id_field!r} observation (id_field)")
        base[cfg.id_field] = ident
        return [{**base, e.name: e.value} for e in msg.entries]

    def _bad(self, record: Record, problem: str) -> Iterable[Record] | None:
        where = f"record seq={record['seq']}" if "seq" in record else "a record"
        if self.config.on_error == "fail":
            raise BadRecord("etl.senml_parse", f"{where}: {problem}")
        self.skipped += 1
        if self.skipped <= 10 or self.skipped % 1000 == 0:
            log.warning("etl.senml_parse skips %s (%d skipped): %s", where, self.skipped, problem)
        return None


class RangeFilter(Operator):
    """``etl.range_filter``: values outside ``[min, max]`` become null (or drop the record)."""

    config: RangeFilterConfig

    def process(self, record: Record) -> Iterable[Record] | None:
        out: Record | None = None
        for name, (lo, hi) in self.config.ranges.items():
            if name not in record or record[name] is None:
                continue  # not this record's observation, or already missing
            v = number(record[name])
            if v is not None and lo <= v <= hi:
                continue
            if self.config.on_invalid == "drop":
                return None
            if out is None:
                out = dict(record)
            out[name] = None
        return (record if out is None else out,)


class BloomFilterOp(Operator):
    """``etl.bloom_filter``: passes records whose ``field`` is in the trained set."""

    config: BloomFilterConfig

    def __init__(self, config: BloomFilterConfig) -> None:
        super().__init__(config)
        self.filter: BloomFilter | None = None

    async def open(self, ctx: TaskContext) -> None:
        await super().open(ctx)
        cfg = self.config
        ids = list(cfg.ids or [])
        if cfg.ids_file is not None:
            lines = await read_lines(
                "ids_file",
                cfg.ids_file,
                ctx.device,
                binary_hint="a serialised (Java/Guava) Bloom filter cannot be read; give the ids as text, "
                "one per line",
            )
            ids.extend(s for s in (line.strip() for line in lines) if s and not s.startswith("#"))
        distinct = set(ids)
        expected = cfg.expected or max(1, len(distinct))
        try:
            bloom = BloomFilter(expected, cfg.error_rate)
        except ValueError as e:
            raise OperatorError(f"etl.bloom_filter: {e}") from e
        for i in distinct:
            bloom.add(i)
        self.filter = bloom
        ctx.log.info(
            "bloom filter on %s: %d ids, %d bits, %d hashes",
            cfg.field,
            len(distinct),
            bloom.size,
            bloom.hashes,
        )

    def process(self, record: Record) -> Iterable[Record] | None:
        assert self.filter is not None, "open() first"
        value = record.get(self.config.field)
        if value is None:
            return None
        return (record,) if key_text(value) in self.filter else None


class Interpolate(Operator):
    """``etl.interpolate``: a null field becomes the mean of its last ``window`` valid values.

    Valid values (numbers) are remembered per field, and per value of ``key`` when given
    (RIoTBench keys by sensor id and observation type). A null with no valid value seen
    yet stays null. Filled values are not remembered (only observed ones are).
    """

    stateful = True
    config: InterpolateConfig

    def __init__(self, config: InterpolateConfig) -> None:
        super().__init__(config)
        self.history: OrderedDict[str, dict[str, deque[float]]] = OrderedDict()

    def _values(self, record: Record) -> dict[str, deque[float]]:
        k = "" if self.config.key is None else key_text(record.get(self.config.key))
        hist = self.history.get(k)
        if hist is None:
            hist = self.history[k] = {}
            if len(self.history) > self.config.max_keys:
                self.history.popitem(last=False)
        else:
            self.history.move_to_end(k)
        return hist

    def process(self, record: Record) -> Iterable[Record] | None:
        fields = [f for f in self.config.fields if f in record]
        if not fields:
            return (record,)
        hist = self._values(record)
        out: Record | None = None
        for f in fields:
            value = record[f]
            if value is None:
                past = hist.get(f)
                if past:
                    if out is None:
                        out = dict(record)
                    out[f] = sum(past) / len(past)
                continue
            v = number(value)
            if v is not None:
                past = hist.get(f)
                if past is None:
                    past = hist[f] = deque(maxlen=self.config.window)
                past.append(v)
        return (record if out is None else out,)

    def snapshot(self) -> Any:
        return {"history": [[k, {f: list(v) for f, v in h.items()}] for k, h in self.history.items()]}

    def restore(self, state: Any) -> None:
        w = self.config.window
        self.history = OrderedDict(
            (str(k), {str(f): deque((float(x) for x in v), maxlen=w) for f, v in h.items()})
            for k, h in state["history"]
        )


class Join(Operator):
    """``etl.join``: merges the records of one message (same ``key``) until every schema field
    is present, then emits ``{key, *keep, *schema fields in schema order}``.

    A record that already holds every field is emitted at once. At most ``max_pending``
    messages wait; beyond that, and at the end of the stream, incomplete messages are
    given up: dropped (default) or emitted with the missing fields null.
    """

    stateful = True
    config: JoinConfig

    def __init__(self, config: JoinConfig) -> None:
        super().__init__(config)
        self.fields: list[str] = list(config.fields or [])
        self.pending: OrderedDict[str, Record] = OrderedDict()
        self.given_up = 0

    async def open(self, ctx: TaskContext) -> None:
        await super().open(ctx)
        if self.config.schema_file is not None:
            self.fields = (await load_schema("schema_file", self.config.schema_file, ctx.device)).fields

    def _assemble(self, parts: Record) -> Record:
        cfg = self.config
        out: Record = {cfg.key: parts.get(cfg.key)}
        for k in cfg.keep:
            if k in parts:
                out[k] = parts[k]
        for f in self.fields:
            out[f] = parts.get(f)
        return out

    def _complete(self, parts: Record) -> bool:
        return all(f in parts for f in self.fields)

    def _give_up(self, parts: Record) -> list[Record]:
        self.given_up += 1
        if self.config.on_incomplete == "emit":
            return [self._assemble(parts)]
        if self.given_up <= 10 or self.given_up % 1000 == 0:
            missing = [f for f in self.fields if f not in parts][:5]
            log.warning(
                "etl.join drops incomplete message %s=%r (missing %s; %d given up)",
                self.config.key,
                parts.get(self.config.key),
                missing,
                self.given_up,
            )
        return []

    def process(self, record: Record) -> Iterable[Record] | None:
        key = self.config.key
        if record.get(key) is None:
            raise BadRecord(
                "etl.join", f"a record has no {key!r} (the message id it joins by): {record!r:.200}"
            )
        k = key_text(record[key])
        parts = self.pending.get(k)
        if parts is None:
            if self._complete(record):
                return (self._assemble(record),)
            parts = self.pending[k] = dict(record)
            out: list[Record] = []
            while len(self.pending) > self.config.max_pending:
                out.extend(self._give_up(self.pending.popitem(last=False)[1]))
            return out
        parts.update(record)
        if self._complete(parts):
            del self.pending[k]
            return (self._assemble(parts),)
        return None

    close_emits = True  # close() gives up on partial joins: a moved copy keeps them instead

    async def close(self) -> Iterable[Record] | None:
        out: list[Record] = []
        while self.pending:
            out.extend(self._give_up(self.pending.popitem(last=False)[1]))
        return out

    def snapshot(self) -> Any:
        return {"pending": [[k, v] for k, v in self.pending.items()], "given_up": self.given_up}

    def restore(self, state: Any) -> None:
        self.pending = OrderedDict((str(k), dict(v)) for k, v in state["pending"])
        self.given_up = int(state.get("given_up", 0))


class Annotate(Operator):
    """``etl.annotate``: adds ``fields`` from the metadata line of ``record[key]``."""

    config: AnnotateConfig

    def __init__(self, config: AnnotateConfig) -> None:
        super().__init__(config)
        self.table: dict[str, list[str]] = {}

    async def open(self, ctx: TaskContext) -> None:
        await super().open(ctx)
        cfg = self.config
        n = len(cfg.fields)
        table: dict[str, list[str]] = {}
        for i, line in enumerate(await read_lines("metadata_file", cfg.metadata_file, ctx.device), 1):
            if not line.strip():
                continue
            key, sep, rest = line.partition(":")
            if not sep:
                raise DeviceFileError(
                    "metadata_file", cfg.metadata_file, ctx.device, f"line {i} has no ':' after the key"
                )
            values = rest.split(",", n - 1)
            if len(values) != n:
                raise DeviceFileError(
                    "metadata_file",
                    cfg.metadata_file,
                    ctx.device,
                    f"line {i} has {len(values)} values for the {n} fields {cfg.fields}",
                )
            table[key.strip()] = [v.strip() for v in values]
        self.table = table
        ctx.log.info("annotating %s from %d metadata lines", cfg.key, len(table))

    def process(self, record: Record) -> Iterable[Record] | None:
        cfg = self.config
        value = record.get(cfg.key)
        values = None if value is None else self.table.get(key_text(value))
        if values is None:
            if cfg.on_missing == "drop":
                return None
            return ({**record, **dict.fromkeys(cfg.fields)},)
        return ({**record, **dict(zip(cfg.fields, values, strict=True))},)


class CsvToSenml(Operator):
    """``etl.csv_to_senml``: ``{*keep, output: '{"e": [{"n", "u", "v"|"sv"|"bv"}, ...], "bt": t}'}``.

    With a schema file, entries follow its order, units and v/sv; without one, every field
    but ``keep`` and ``time_field`` becomes an entry (numbers as ``v``, booleans as ``bv``,
    the rest as ``sv``). Null fields are left out (SenML has no null).
    """

    config: CsvToSenmlConfig

    def __init__(self, config: CsvToSenmlConfig) -> None:
        super().__init__(config)
        self.schema: Schema | None = None

    async def open(self, ctx: TaskContext) -> None:
        await super().open(ctx)
        if self.config.schema_file is not None:
            self.schema = await load_schema("schema_file", self.config.schema_file, ctx.device)

    @staticmethod
    def _kind(value: Any) -> str:
        if isinstance(value, bool):
            return "bv"
        return "v" if isinstance(value, int | float) else "sv"

    def _entry(self, name: str, unit: str | None, kind: str | None, value: Any) -> dict[str, Any]:
        kind = kind or self._kind(value)
        entry: dict[str, Any] = {"n": name}
        if unit:
            entry["u"] = unit
        if kind == "v":
            v = number(value)
            if v is None:
                raise BadRecord(
                    "etl.csv_to_senml", f"field {name!r} is {value!r}, but the schema says a number (v)"
                )
            entry["v"] = v
        elif kind in ("bv", "vb"):
            entry[kind] = bool(value)
        else:
            entry[kind] = value if isinstance(value, str) else orjson.dumps(value).decode()
        return entry

    def process(self, record: Record) -> Iterable[Record] | None:
        cfg = self.config
        skip = {cfg.time_field, *cfg.keep}
        entries: list[dict[str, Any]] = []
        if self.schema is not None:
            s = self.schema
            for name, unit, kind in zip(s.fields, s.units, s.kinds, strict=True):
                if name not in skip and record.get(name) is not None:
                    entries.append(self._entry(name, unit, kind, record[name]))
        else:
            for name, value in record.items():
                if name not in skip and value is not None:
                    entries.append(self._entry(name, None, None, value))
        out = {k: record[k] for k in cfg.keep if k in record}
        out[cfg.output] = dumps(record.get(cfg.time_field), entries)
        return (out,)


OPERATORS: dict[str, type[Operator]] = {
    "etl.senml_parse": SenmlParse,
    "etl.range_filter": RangeFilter,
    "etl.bloom_filter": BloomFilterOp,
    "etl.interpolate": Interpolate,
    "etl.join": Join,
    "etl.annotate": Annotate,
    "etl.csv_to_senml": CsvToSenml,
}
