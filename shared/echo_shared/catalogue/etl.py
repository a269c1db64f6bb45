"""Catalogue entries of the ETL operators: the RIoTBench ETL dataflow's stages.

RIoTBench's ETL (Shukla et al. 2017) is SenML parse -> range filter -> Bloom filter ->
interpolation -> join -> annotate -> CSV-to-SenML -> publish. Here records are flat dicts
(one field per SenML observation); ``etl.senml_parse`` can also split a message into one
record per observation, the way RIoTBench does, and ``etl.join`` puts them back together by
message id. Semantics are documented in ``echo_agent.operators.etl_ops``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import OperatorConfig, OperatorInfo, Role, entries

FieldName = str


class SenmlParseConfig(OperatorConfig):
    field: FieldName = Field(
        default="line",
        min_length=1,
        description="input field holding '<timestamp_ms>,<SenML JSON>' (or just the SenML JSON)",
    )
    time_field: FieldName = Field(
        default="timestamp",
        min_length=1,
        description="output field for the message's base time (SenML 'bt'; else the line's timestamp)",
    )
    keep: list[FieldName] = Field(
        default_factory=lambda: ["seq"],
        description="input fields copied to the output (their absence is not an error); 'seq' is the "
        "message id etl.join uses",
    )
    split: bool = Field(
        default=False,
        description="false: one record per message with every observation as a field; true: one record "
        "per observation (RIoTBench style: kept fields + time_field + id_field + that observation), "
        "to be reassembled by etl.join",
    )
    id_field: FieldName = Field(
        default="taxi_identifier",
        min_length=1,
        description="split mode: the observation copied into every part (the sensor id: filters and "
        "interpolation key on it)",
    )
    on_error: Literal["fail", "skip"] = Field(
        default="fail",
        description="a line that is not SenML: fail the task with the reason, or skip it (logged, counted)",
    )


class RangeFilterConfig(OperatorConfig):
    ranges: dict[FieldName, tuple[float, float]] = Field(
        min_length=1,
        description="valid [min, max] per field, both inclusive: {trip_time_in_secs: [140, 3155], ...}",
    )
    on_invalid: Literal["null", "drop"] = Field(
        default="null",
        description="null: an out-of-range or non-numeric value becomes null (missing; etl.interpolate "
        "fills it), as RIoTBench does; drop: the whole record is dropped",
    )

    @field_validator("ranges")
    @classmethod
    def _ordered(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (lo, hi) in v.items():
            if lo > hi:
                raise ValueError(f"range of {name!r}: min {lo} is greater than max {hi}")
        return v


class BloomFilterConfig(OperatorConfig):
    field: FieldName = Field(
        default="taxi_identifier", min_length=1, description="field whose value is tested"
    )
    ids: list[str] | None = Field(default=None, description="the trained set (values of field)")
    ids_file: str | None = Field(
        default=None, min_length=1, description="file on the device with the trained set, one value per line"
    )
    expected: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="expected number of items, sizes the filter (default: the number trained)",
    )
    error_rate: float = Field(default=1e-6, gt=0, lt=1, description="false-positive probability")

    @model_validator(mode="after")
    def _some_ids(self) -> BloomFilterConfig:
        if self.ids is None and self.ids_file is None:
            raise ValueError("give ids (a list) or ids_file (a file of ids, one per line)")
        return self


class InterpolateConfig(OperatorConfig):
    fields: list[FieldName] = Field(min_length=1, description="fields whose null values are filled")
    window: int = Field(
        default=5, ge=1, le=100_000, description="fill with the mean of this many last valid values"
    )
    key: FieldName | None = Field(
        default=None, description="keep the recent values per value of this field (e.g. the sensor id)"
    )
    max_keys: int = Field(
        default=100_000, ge=1, description="keys remembered at most; the least recently seen is forgotten"
    )


class JoinConfig(OperatorConfig):
    schema_file: str | None = Field(
        default=None,
        min_length=1,
        description="schema file on the device (first line: the field names, comma-separated)",
    )
    fields: list[FieldName] | None = Field(
        default=None, min_length=1, description="the field names, in order"
    )
    key: FieldName = Field(default="seq", min_length=1, description="field identifying the message")
    keep: list[FieldName] = Field(default_factory=list, description="other fields copied to the output")
    max_pending: int = Field(
        default=10_000, ge=1, description="incomplete messages held at most; the oldest is given up"
    )
    on_incomplete: Literal["drop", "emit"] = Field(
        default="drop",
        description="what happens to a message given up (max_pending, end of stream): dropped, or "
        "emitted with its missing fields null",
    )

    @model_validator(mode="after")
    def _one_schema(self) -> JoinConfig:
        if (self.schema_file is None) == (self.fields is None):
            raise ValueError("give exactly one of schema_file and fields")
        return self


class AnnotateConfig(OperatorConfig):
    metadata_file: str = Field(
        min_length=1,
        description="file on the device, lines '<key>:<value>,<value>,...' (taxi id:company,...)",
    )
    key: FieldName = Field(default="taxi_identifier", min_length=1, description="field looked up in the file")
    fields: list[FieldName] = Field(
        default_factory=lambda: ["taxi_company", "drivername", "taxi_city"],
        min_length=1,
        description="names of the added fields, one per value in a metadata line",
    )
    on_missing: Literal["null", "drop"] = Field(
        default="null", description="a key not in the file: add the fields as null, or drop the record"
    )


class CsvToSenmlConfig(OperatorConfig):
    schema_file: str | None = Field(
        default=None,
        min_length=1,
        description="schema file on the device (names, units, v/sv per field); without it every field "
        "but keep and time_field becomes an entry, numbers as v, strings as sv",
    )
    time_field: FieldName = Field(
        default="timestamp", min_length=1, description="field written as SenML 'bt'"
    )
    keep: list[FieldName] = Field(
        default_factory=lambda: ["seq"], description="fields copied to the output record beside the SenML"
    )
    output: FieldName = Field(
        default="senml", min_length=1, description="output field holding the SenML JSON"
    )


CATALOGUE = entries(
    OperatorInfo(
        "etl.senml_parse",
        Role.transform,
        SenmlParseConfig,
        cost=2.6,
        summary="parse '<ts>,<SenML JSON>' lines into records (or one record per observation)",
    ),
    OperatorInfo(
        "etl.range_filter",
        Role.transform,
        RangeFilterConfig,
        cost=1.2,
        summary="null (or drop) values outside their valid range",
    ),
    OperatorInfo(
        "etl.bloom_filter",
        Role.transform,
        BloomFilterConfig,
        cost=1.4,
        summary="pass records whose field is in a trained set (Bloom filter)",
    ),
    OperatorInfo(
        "etl.interpolate",
        Role.transform,
        InterpolateConfig,
        stateful=True,
        cost=1.2,
        summary="fill null fields with the mean of the recent valid values",
    ),
    OperatorInfo(
        "etl.join",
        Role.transform,
        JoinConfig,
        stateful=True,
        cost=1.2,
        summary="assemble the parts of each message into one record in schema order",
    ),
    OperatorInfo(
        "etl.annotate",
        Role.transform,
        AnnotateConfig,
        cost=1.1,
        summary="add fields looked up in a metadata file",
    ),
    OperatorInfo(
        "etl.csv_to_senml",
        Role.transform,
        CsvToSenmlConfig,
        cost=1.8,
        summary="render each record as a SenML JSON string",
    ),
)
