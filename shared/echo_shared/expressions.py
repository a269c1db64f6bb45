"""The safe expression language of ``core.filter`` and ``core.map``.

An expression is parsed with :mod:`ast` (``mode="eval"``) and compiled into a tree of
closures over a whitelist of node types; user text is never passed to ``eval``/``exec``.
Anything outside the language is rejected when the config is validated (a ``422`` at
``POST``), with the line and column of the offending part (counted from the first
non-blank character). One implementation serves the scheduler (validation) and the
agent (evaluation).

The language (Python syntax, a small subset of it; an expression may span lines and end
in a ``# comment``):

* constants: numbers, strings, ``True``, ``False``, ``None``;
* a bare name is a field of the record: ``temp > 30``. A missing field is ``None``.
  ``record`` is the whole record, for odd field names: ``record["max temp"]``;
* nested fields: ``payload.temp`` or ``payload["temp"]`` (attributes read keys of objects,
  never Python attributes; names starting with ``_`` are refused), list items
  ``tags[0]`` and slices ``line[0:3]``. A missing key, an index out of range or any step
  through ``None`` gives ``None``;
* comparisons, also chained (``0 <= x < 10``): ``== != < <= > >=``, ``in``/``not in``
  (on strings, lists, objects; ``x in None`` is false), ``is``/``is not`` only against
  ``None``, ``True`` or ``False``. An ordering comparison with ``None`` is false;
* ``and``, ``or``, ``not``; ``a if cond else b``;
* arithmetic ``+ - * / // % **`` and unary ``-``/``+``;
* literals: lists, tuples, sets, objects with string keys (``{"k": x}``);
* functions (``has``/``exists`` take a field: ``has(temp)``, ``has(a.b)``, ``has("odd name")``):
  ``len abs min max round int float str bool lower upper strip startswith endswith
  contains split replace join has exists coalesce``. ``coalesce(a, b, ...)`` is the first
  argument that is not ``None``; ``min``/``max`` skip ``None``s; every other function
  (but ``bool``) returns ``None`` when its first argument is ``None``.

Limits (resource abuse): at most ``MAX_SOURCE_CHARS`` characters, ``MAX_NODES`` syntax
nodes, ``MAX_DEPTH`` levels of nesting; at run time strings and lists built by an
expression hold at most ``MAX_SEQUENCE`` items, integers at most ``MAX_INT_BITS`` bits;
``%`` does not format strings.

Errors: ``ExpressionError`` (a ``ValueError``, so pydantic validators report it) when an
expression is not in the language; ``EvaluationError`` when it fails on one record (a
type error such as ``"a" - 1``, a division by zero, a limit). What happens to such a
record is the operator's policy (``core.filter`` drops it by default).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .expression_functions import (
    MAX_INT_BITS,
    MAX_SEQUENCE,
    EvaluationError,
    binary_op,
    compare,
    function,
    get_item,
    get_slice,
    to_json_value,
)

MAX_SOURCE_CHARS = 2000
MAX_NODES = 400
MAX_DEPTH = 50

Record = Mapping[str, Any]
Fn = Callable[[Record], Any]

_BINARY = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}
_COMPARE = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
}
_REFUSED = {
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "generator expressions",
    ast.JoinedStr: "f-strings (use str() and +)",
    ast.NamedExpr: "assignment expressions (:=)",
    ast.Starred: "starred arguments (*x)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.BitAnd: "operator '&'",
    ast.BitOr: "operator '|'",
    ast.BitXor: "operator '^'",
    ast.LShift: "operator '<<'",
    ast.RShift: "operator '>>'",
    ast.MatMult: "operator '@'",
    ast.Invert: "operator '~'",
}
_FIELD_FUNCTIONS = {"has", "exists"}


class ExpressionError(ValueError):
    """An expression outside the language; ``line``/``column`` are 1-based (0 = unknown)."""

    def __init__(self, reason: str, *, line: int = 0, column: int = 0, multiline: bool = False) -> None:
        self.reason = reason
        self.line = line
        self.column = column
        where = ""
        if column:
            where = f"line {line}, column {column}: " if multiline else f"column {column}: "
        super().__init__(f"{where}{reason}")


@dataclass(frozen=True)
class Expression:
    """A compiled expression: call it with a record (``EvaluationError`` on failure)."""

    source: str
    fn: Fn = field(repr=False, compare=False)

    def __call__(self, record: Record) -> Any:
        try:
            return self.fn(record)
        except EvaluationError:
            raise
        except (TypeError, ValueError, ArithmeticError, RecursionError, MemoryError) as e:
            raise EvaluationError(f"{type(e).__name__}: {e}") from e

    def test(self, record: Record) -> bool:
        """The expression as a condition (Python truthiness of its value)."""
        return bool(self(record))


def check(source: str) -> str:
    """Validate an expression (for pydantic validators); returns it unchanged."""
    compile_expression(source)
    return source


@lru_cache(maxsize=512)
def compile_expression(source: str) -> Expression:
    """Parse and compile ``source``; ``ExpressionError`` names where it leaves the language."""
    if not isinstance(source, str):
        raise ExpressionError("an expression must be a string")
    if not source.strip():
        raise ExpressionError("the expression is empty")
    if len(source) > MAX_SOURCE_CHARS:
        raise ExpressionError(f"the expression is longer than {MAX_SOURCE_CHARS} characters")
    text = source.strip()
    lines = text.splitlines()
    try:  # in parentheses on lines of their own: the expression may span lines, even end in a comment
        tree = ast.parse(f"(\n{text}\n)", mode="eval")
    except SyntaxError as e:
        line = (e.lineno or 0) - 1
        if not 1 <= line <= len(lines) or not e.offset:  # on the wrapping parentheses' lines
            where = " at the end of the expression" if line > len(lines) else ""
            raise ExpressionError(f"syntax error{where}: {e.msg}") from None
        raise ExpressionError(
            f"syntax error: {e.msg}", line=line, column=e.offset, multiline=len(lines) > 1
        ) from None
    except (RecursionError, MemoryError, ValueError) as e:
        raise ExpressionError(f"the expression cannot be parsed: {type(e).__name__}") from None
    compiler = _Compiler(lines)
    compiler.check_size(tree.body)
    return Expression(source, compiler.compile(tree.body))


class _Compiler:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines or [""]  # the expression's lines; node line 1 is the "(" before them

    def fail(self, node: ast.AST, reason: str, *, offset: int | None = None) -> ExpressionError:
        line = max(getattr(node, "lineno", 1) - 1, 0)
        if offset is None:
            offset = getattr(node, "col_offset", 0)
        column = 0
        if line:  # col_offset counts UTF-8 bytes
            text = self.lines[line - 1] if line <= len(self.lines) else ""
            column = len(text.encode()[:offset].decode(errors="ignore")) + 1
        return ExpressionError(reason, line=line, column=column, multiline=len(self.lines) > 1)

    def check_size(self, root: ast.AST) -> None:
        count = 0
        stack = [(root, 1)]
        while stack:
            node, depth = stack.pop()
            count += 1
            if count > MAX_NODES:
                raise self.fail(root, f"the expression is too large (more than {MAX_NODES} parts)")
            if depth > MAX_DEPTH:
                raise self.fail(node, f"the expression is nested more than {MAX_DEPTH} levels deep")
            stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))

    # ------------------------------------------------------------------ nodes

    def compile(self, node: ast.AST) -> Fn:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            what = _REFUSED.get(type(node)) or _REFUSED.get(type(getattr(node, "op", None)))
            if what is None:
                what = f"{type(node).__name__} ({ast.unparse(node)[:40]!r})"
            raise self.fail(node, f"not allowed: {what}")
        fn: Fn = method(node)
        return fn

    def _Constant(self, node: ast.Constant) -> Fn:
        value = node.value
        if value is not None and not isinstance(value, bool | int | float | str):
            raise self.fail(node, f"not allowed: constant {value!r} (numbers, strings, True/False/None)")
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise self.fail(node, f"integer constant larger than {MAX_INT_BITS} bits")
        return lambda _r: value

    def _Name(self, node: ast.Name) -> Fn:
        name = node.id
        if name.startswith("__") and name.endswith("__"):
            raise self.fail(node, f"name {name!r} is reserved")
        if name == "record":
            return lambda r: r
        return lambda r: r.get(name)

    def _Attribute(self, node: ast.Attribute) -> Fn:
        attr = node.attr
        if attr.startswith("_"):
            at = (node.end_col_offset or 0) - len(attr.encode()) if node.end_lineno == node.lineno else None
            raise self.fail(node, f"not allowed: attribute {attr!r} (names starting with '_')", offset=at)
        base = self.compile(node.value)

        def attribute(r: Record) -> Any:
            value = base(r)
            if value is None:
                return None
            if isinstance(value, Mapping):
                return value.get(attr)
            raise EvaluationError(f"'.{attr}' reads a field of an object, not of {type(value).__name__}")

        return attribute

    def _Subscript(self, node: ast.Subscript) -> Fn:
        base = self.compile(node.value)
        if isinstance(node.slice, ast.Slice):
            s = node.slice
            if s.step is not None:
                raise self.fail(s, "slices take no step")
            lo = self.compile(s.lower) if s.lower is not None else None
            hi = self.compile(s.upper) if s.upper is not None else None
            return lambda r: get_slice(base(r), lo(r) if lo else None, hi(r) if hi else None)
        index = self.compile(node.slice)
        return lambda r: get_item(base(r), index(r))

    def _BinOp(self, node: ast.BinOp) -> Fn:
        symbol = _BINARY.get(type(node.op))
        if symbol is None:
            raise self.fail(node, f"not allowed: {_REFUSED.get(type(node.op), type(node.op).__name__)}")
        left, right = self.compile(node.left), self.compile(node.right)
        return lambda r: binary_op(symbol, left(r), right(r))

    def _UnaryOp(self, node: ast.UnaryOp) -> Fn:
        operand = self.compile(node.operand)
        if isinstance(node.op, ast.Not):
            return lambda r: not operand(r)
        if isinstance(node.op, ast.USub):
            return lambda r: binary_op("-", 0, operand(r))
        if isinstance(node.op, ast.UAdd):
            return lambda r: binary_op("+", 0, operand(r))
        raise self.fail(node, f"not allowed: {_REFUSED.get(type(node.op), type(node.op).__name__)}")

    def _BoolOp(self, node: ast.BoolOp) -> Fn:
        parts = [self.compile(v) for v in node.values]
        if isinstance(node.op, ast.And):

            def and_(r: Record) -> Any:
                value: Any = True
                for p in parts:
                    value = p(r)
                    if not value:
                        return value
                return value

            return and_

        def or_(r: Record) -> Any:
            value: Any = False
            for p in parts:
                value = p(r)
                if value:
                    return value
            return value

        return or_

    def _Compare(self, node: ast.Compare) -> Fn:
        symbols = [_COMPARE[type(op)] for op in node.ops]
        for symbol, right in zip(symbols, node.comparators, strict=True):
            if symbol in ("is", "is not") and not (
                isinstance(right, ast.Constant) and right.value in (None, True, False)
            ):
                raise self.fail(right, f"'{symbol}' compares only with None, True or False; use ==")
        first = self.compile(node.left)
        rest = [self.compile(c) for c in node.comparators]
        pairs = list(zip(symbols, rest, strict=True))

        def comparison(r: Record) -> bool:
            left = first(r)
            for symbol, fn in pairs:
                right = fn(r)
                if not compare(symbol, left, right):
                    return False
                left = right
            return True

        return comparison

    def _IfExp(self, node: ast.IfExp) -> Fn:
        test, body, orelse = self.compile(node.test), self.compile(node.body), self.compile(node.orelse)
        return lambda r: body(r) if test(r) else orelse(r)

    def _List(self, node: ast.List) -> Fn:
        items = [self.compile(e) for e in node.elts]
        return lambda r: [i(r) for i in items]

    _Tuple = _List

    def _Set(self, node: ast.Set) -> Fn:
        items = [self.compile(e) for e in node.elts]
        if all(isinstance(e, ast.Constant) for e in node.elts):
            constant = frozenset(i({}) for i in items)
            return lambda _r: constant
        return lambda r: frozenset(i(r) for i in items)

    def _Dict(self, node: ast.Dict) -> Fn:
        keys: list[str] = []
        for k in node.keys:
            if not (isinstance(k, ast.Constant) and isinstance(k.value, str)):
                raise self.fail(k or node, "object keys must be strings")
            keys.append(k.value)
        values = [self.compile(v) for v in node.values]
        pairs = list(zip(keys, values, strict=True))
        return lambda r: {k: v(r) for k, v in pairs}

    def _Call(self, node: ast.Call) -> Fn:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, f"only functions can be called, by name: {_function_hint(node)}")
        name = node.func.id
        if node.keywords:
            raise self.fail(node.keywords[0], f"{name}() takes no keyword arguments")
        if name in _FIELD_FUNCTIONS:
            return self._field_test(node, name)
        try:
            impl, lo, hi = function(name)
        except KeyError:
            raise self.fail(node.func, f"unknown function {name!r}") from None
        n = len(node.args)
        if not lo <= n <= hi:
            want = f"{lo}" if lo == hi else f"{lo} to {hi}" if hi < 99 else f"at least {lo}"
            raise self.fail(node, f"{name}() takes {want} argument(s), got {n}")
        args = [self.compile(a) for a in node.args]
        if name == "coalesce":

            def coalesce(r: Record) -> Any:
                for a in args:
                    value = a(r)
                    if value is not None:
                        return value
                return None

            return coalesce
        return lambda r: impl(*(a(r) for a in args))

    def _field_test(self, node: ast.Call, name: str) -> Fn:
        if len(node.args) != 1:
            raise self.fail(node, f"{name}() takes one field: {name}(temp) or {name}('odd name')")
        path = self._field_path(node.args[0])
        if path is None:
            raise self.fail(node.args[0], f"{name}() takes a field: {name}(temp), {name}(a.b), {name}('x y')")

        def present(r: Record) -> bool:
            value: Any = r
            for key in path:
                if not isinstance(value, Mapping) or key not in value:
                    return False
                value = value[key]
            return True

        return present

    def _field_path(self, node: ast.AST) -> list[str] | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.Name) and node.id != "record":
            return [node.id]
        if isinstance(node, ast.Attribute) and not node.attr.startswith("_"):
            base = self._field_path(node.value)
            return None if base is None else [*base, node.attr]
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
            if not isinstance(key, str):
                return None
            if isinstance(node.value, ast.Name) and node.value.id == "record":
                return [key]
            base = self._field_path(node.value)
            return None if base is None else [*base, key]
        return None


def _function_hint(node: ast.Call) -> str:
    if isinstance(node.func, ast.Attribute):
        return f"write {node.func.attr}(x, ...) instead of x.{node.func.attr}(...)"
    return "f(x, ...)"


__all__ = [
    "MAX_DEPTH",
    "MAX_INT_BITS",
    "MAX_NODES",
    "MAX_SEQUENCE",
    "MAX_SOURCE_CHARS",
    "EvaluationError",
    "Expression",
    "ExpressionError",
    "check",
    "compile_expression",
    "to_json_value",
]
