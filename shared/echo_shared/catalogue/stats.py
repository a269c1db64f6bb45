"""Catalogue entries of the stats operators (``stats.count_by_key`` is in ``core``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import OperatorConfig, OperatorInfo, Role, entries

AggregateOp = Literal["count", "sum", "avg", "min", "max"]


class WindowAggregateConfig(OperatorConfig):
    op: AggregateOp = Field(description="count, sum, avg, min or max")
    field: str | None = Field(
        default=None,
        min_length=1,
        description="numeric field aggregated (not needed for count); records where it is null, absent or "
        "not a number are ignored",
    )
    key: str | None = Field(default=None, min_length=1, description="aggregate per value of this field")
    count: int | None = Field(
        default=None, ge=1, le=1_000_000, description="count windows: this many records (per key)"
    )
    seconds: float | None = Field(default=None, gt=0, le=86_400 * 366, description="time windows: this long")
    slide: float | None = Field(
        default=None,
        gt=0,
        description="sliding windows: a new window every slide records (count) or seconds (time); "
        "default: tumbling (slide = size)",
    )
    time_field: str | None = Field(
        default=None,
        min_length=1,
        description="time windows on event time read from this field; default: processing time",
    )
    time_unit: Literal["ms", "s"] = Field(default="ms", description="unit of time_field's values")
    lateness: float = Field(
        default=0.0,
        ge=0,
        description="event time: seconds a window stays open after the newest event time passed its end",
    )
    max_windows: int = Field(
        default=100_000, ge=1, description="open windows held at most; the oldest is closed early"
    )

    @model_validator(mode="after")
    def _consistent(self) -> WindowAggregateConfig:
        if (self.count is None) == (self.seconds is None):
            raise ValueError("give exactly one of count (count windows) and seconds (time windows)")
        if self.op != "count" and self.field is None:
            raise ValueError(f"op {self.op} needs field")
        if self.count is not None:
            if self.time_field is not None:
                raise ValueError("time_field applies only to time windows (seconds)")
            if self.slide is not None and (self.slide != int(self.slide) or self.slide > self.count):
                raise ValueError("slide of a count window must be a whole number of records <= count")
        if self.seconds is not None and self.slide is not None:
            if self.slide > self.seconds:
                raise ValueError("slide must not exceed seconds")
            ratio = self.seconds / self.slide
            if abs(ratio - round(ratio)) > 1e-9:
                raise ValueError("seconds must be a whole multiple of slide")
            if ratio > 1000:
                raise ValueError("at most 1000 overlapping windows (seconds / slide)")
        return self


CATALOGUE = entries(
    OperatorInfo(
        "stats.window_aggregate",
        Role.transform,
        WindowAggregateConfig,
        stateful=True,
        cost=1.3,
        summary="count/sum/avg/min/max of a field over count or time windows, per key",
    ),
)
