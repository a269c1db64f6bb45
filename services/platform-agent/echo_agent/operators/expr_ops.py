"""Implementations of the expression operators (catalogue: ``echo_shared.catalogue.expr``).

Both use the one expression language of ``echo_shared.expressions``. A record on which
an expression fails at run time (``EvaluationError``: ``"a" - 1``, a division by zero, a
limit) follows the config's ``on_error`` policy; by default it is dropped and counted,
and only the first failure of a task is logged (with the record), so a stream of bad
records does not flood the log. ``close()`` logs the total.
"""

from __future__ import annotations

import logging
from typing import Any

from echo_shared.catalogue.expr import FilterConfig, MapConfig
from echo_shared.expressions import EvaluationError, Expression, compile_expression, to_json_value

from .base import Operator, Output, Record, TaskContext


class ExpressionFailed(Exception):
    """An expression failed on a record and the policy is ``fail``: the task fails."""


class _ExpressionOperator(Operator):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.errors = 0  # records on which an expression failed

    def _failed(self, expr: Expression, record: Record, e: EvaluationError) -> None:
        self.errors += 1
        if self.config.on_error == "fail":
            raise ExpressionFailed(f"expression {expr.source!r} failed on a record: {e}") from e
        if self.errors == 1:
            self._log().warning(
                "expression %r failed (%s) on record %.300r; policy %s (later failures are counted)",
                expr.source,
                e,
                record,
                self.config.on_error,
            )

    def _log(self) -> logging.Logger:
        ctx: TaskContext | None = getattr(self, "ctx", None)  # set by open()
        return ctx.log if ctx is not None else logging.getLogger("echo.task")

    async def close(self) -> Output:
        if self.errors:
            self._log().warning(
                "expressions failed on %d record(s) (policy %s)", self.errors, self.config.on_error
            )
        return None


class Filter(_ExpressionOperator):
    """``core.filter``: passes the records for which ``where`` is true."""

    config: FilterConfig

    def __init__(self, config: FilterConfig) -> None:
        super().__init__(config)
        self.where = compile_expression(config.where)
        self.dropped = 0  # records the condition rejected (not counting errors)

    def process(self, record: Record) -> Output:
        try:
            ok = self.where.test(record)
        except EvaluationError as e:
            self._failed(self.where, record, e)
            return (record,) if self.config.on_error == "keep" else None
        if ok:
            return (record,)
        self.dropped += 1
        return None

    def process_batch(self, records: list[Record]) -> list[Record]:
        out: list[Record] = []
        for r in records:
            result = self.process(r)
            if result is not None:
                out.extend(result)
        return out


class Map(_ExpressionOperator):
    """``core.map``: computes ``set`` fields from the input record, drops or keeps fields."""

    config: MapConfig

    def __init__(self, config: MapConfig) -> None:
        super().__init__(config)
        self.exprs = [(name, compile_expression(src)) for name, src in config.set_.items()]
        self.drop = frozenset(config.drop)
        self.keep = None if config.keep is None else list(dict.fromkeys(config.keep))

    def apply(self, record: Record) -> Record | None:
        values: dict[str, Any] = {}
        for name, expr in self.exprs:
            try:
                values[name] = to_json_value(expr(record))
            except EvaluationError as e:
                self._failed(expr, record, e)
                if self.config.on_error == "drop":
                    return None
                values[name] = None
        if self.keep is not None:
            out = {k: record[k] for k in self.keep if k in record}
        elif self.drop:
            out = {k: v for k, v in record.items() if k not in self.drop}
        else:
            out = dict(record)
        out.update(values)
        return out

    def process(self, record: Record) -> Output:
        out = self.apply(record)
        return None if out is None else (out,)

    def process_batch(self, records: list[Record]) -> list[Record]:
        return [out for r in records if (out := self.apply(r)) is not None]


OPERATORS: dict[str, type[Operator]] = {"core.filter": Filter, "core.map": Map}
