"""Catalogue entries of the expression operators: ``core.filter`` and ``core.map``.

Their expressions are checked here, when the config is validated, so an expression
outside the language (``echo_shared.expressions``) is a 422 at ``POST`` that names the
field (``tasks[1].config.where``) and the column.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from .. import expressions
from .base import OperatorConfig, OperatorInfo, Role, entries

ExpressionText = Annotated[
    str,
    Field(
        min_length=1,
        max_length=expressions.MAX_SOURCE_CHARS,
        description="an expression over the record's fields (see echo_shared.expressions)",
    ),
    AfterValidator(expressions.check),
]
FieldName = Annotated[str, Field(min_length=1, max_length=256)]


class FilterConfig(OperatorConfig):
    where: ExpressionText = Field(
        description="records for which this expression is true pass, e.g. 'temp > 30 and city == \"nyc\"'"
    )
    on_error: Literal["drop", "keep", "fail"] = Field(
        default="drop",
        description="a record on which the expression fails (e.g. '\"a\" > 1'): dropped and counted "
        "(the first is logged), kept, or the task fails",
    )


class MapConfig(OperatorConfig):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    set_: dict[FieldName, ExpressionText] = Field(
        default_factory=dict,
        alias="set",
        description="fields to compute: {field: expression}; every expression sees the input record",
    )
    drop: list[FieldName] = Field(default_factory=list, description="fields to remove from the record")
    keep: list[FieldName] | None = Field(
        default=None, description="keep only these fields of the input (plus the computed ones)"
    )
    on_error: Literal["drop", "null", "fail"] = Field(
        default="drop",
        description="a record on which an expression fails: dropped and counted (the first is logged), "
        "the field set to null, or the task fails",
    )

    @model_validator(mode="after")
    def _consistent(self) -> MapConfig:
        if not self.set_ and not self.drop and self.keep is None:
            raise ValueError("give at least one of set, drop or keep")
        if self.drop and self.keep is not None:
            raise ValueError("give either keep or drop, not both")
        both = sorted(set(self.set_) & set(self.drop))
        if both:
            raise ValueError(f"fields both computed (set) and dropped: {both}")
        return self


CATALOGUE = entries(
    OperatorInfo(
        "core.filter",
        Role.transform,
        FilterConfig,
        cost=1.3,
        summary="pass the records for which the expression config.where is true",
    ),
    OperatorInfo(
        "core.map",
        Role.transform,
        MapConfig,
        cost=1.3,
        summary="compute fields with expressions (config.set), drop or keep fields",
    ),
)
