"""Run-time semantics of the expression language (``expressions.py``): operators with
their resource guards, item access, and the fixed set of functions.

Every failure on a value is an ``EvaluationError`` with a message fit for a log line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import orjson

MAX_SEQUENCE = 1_000_000  # items of a string or list an expression builds
MAX_INT_BITS = 4096
MAX_ROUND_DIGITS = 15


class EvaluationError(Exception):
    """An expression failed on one record (type error, division by zero, a limit)."""


def _kind(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def _sized(value: Any) -> bool:
    return isinstance(value, str | list | tuple)


def _number(value: Any) -> bool:
    return isinstance(value, int | float)


# ---------------------------------------------------------------------- operators


def binary_op(symbol: str, a: Any, b: Any) -> Any:
    """``a <symbol> b`` for ``+ - * / // % **``, with the language's guards."""
    if symbol == "+":
        if _sized(a) and _sized(b) and len(a) + len(b) > MAX_SEQUENCE:
            raise EvaluationError(f"'+' would build more than {MAX_SEQUENCE} items")
        if isinstance(a, list | tuple) and isinstance(b, list | tuple):
            return [*a, *b]
        return _checked(symbol, a, b, lambda: a + b)
    if symbol == "-":
        return _checked(symbol, a, b, lambda: a - b)
    if symbol == "*":
        for seq, n in ((a, b), (b, a)):
            if _sized(seq) and isinstance(n, int) and len(seq) * max(n, 0) > MAX_SEQUENCE:
                raise EvaluationError(f"'*' would build more than {MAX_SEQUENCE} items")
        if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_INT_BITS:
            raise EvaluationError(f"'*' would build an integer of more than {MAX_INT_BITS} bits")
        if isinstance(a, list | tuple) or isinstance(b, list | tuple):
            return _checked(symbol, a, b, lambda: list(a * b))
        return _checked(symbol, a, b, lambda: a * b)
    if symbol == "/":
        return _checked(symbol, a, b, lambda: a / b)
    if symbol == "//":
        return _checked(symbol, a, b, lambda: a // b)
    if symbol == "%":
        if not (_number(a) and _number(b)):
            raise EvaluationError(f"'%' takes numbers, not {_kind(a)} and {_kind(b)}")
        return _checked(symbol, a, b, lambda: a % b)
    if symbol == "**":
        return power(a, b)
    raise EvaluationError(f"unknown operator {symbol!r}")


def _checked(symbol: str, a: Any, b: Any, op: Callable[[], Any]) -> Any:
    if a is None or b is None:
        raise EvaluationError(f"'{symbol}' on None (a missing field?)")
    try:
        return op()
    except ZeroDivisionError:
        raise EvaluationError(f"division by zero in '{symbol}'") from None
    except (TypeError, OverflowError) as e:
        raise EvaluationError(f"'{symbol}' cannot combine {_kind(a)} and {_kind(b)}: {e}") from None


def power(a: Any, b: Any) -> Any:
    if not (_number(a) and _number(b)):
        raise EvaluationError(f"'**' takes numbers, not {_kind(a)} and {_kind(b)}")
    # only an integer raised to a positive integer grows without bound (floats overflow)
    growing = isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1
    if growing and b * (abs(a).bit_length() - 1) > MAX_INT_BITS:  # a lower bound of the result's size
        raise EvaluationError(f"'**' would build an integer of more than {MAX_INT_BITS} bits")
    return _checked("**", a, b, lambda: a**b)


def compare(symbol: str, a: Any, b: Any) -> bool:
    """One comparison. Ordering with ``None`` is false; ``x in None`` is false."""
    if symbol == "==":
        return bool(a == b)
    if symbol == "!=":
        return bool(a != b)
    if symbol == "is":
        return a is b
    if symbol == "is not":
        return a is not b
    if symbol in ("in", "not in"):
        if b is None:
            found = False
        elif isinstance(b, str):
            if not isinstance(a, str):
                raise EvaluationError(f"'{symbol}' a string needs a string on the left, not {_kind(a)}")
            found = a in b
        elif isinstance(b, list | tuple | frozenset | set | Mapping):
            try:
                found = a in b
            except TypeError:  # an unhashable value in a set or object
                found = False
        else:
            raise EvaluationError(f"'{symbol}' needs a string, list or object on the right, not {_kind(b)}")
        return found if symbol == "in" else not found
    if a is None or b is None:
        return False
    try:
        if symbol == "<":
            return bool(a < b)
        if symbol == "<=":
            return bool(a <= b)
        if symbol == ">":
            return bool(a > b)
        if symbol == ">=":
            return bool(a >= b)
    except TypeError:
        raise EvaluationError(f"'{symbol}' cannot order {_kind(a)} and {_kind(b)}") from None
    raise EvaluationError(f"unknown comparison {symbol!r}")


def get_item(value: Any, key: Any) -> Any:
    """``value[key]``: object keys, list/string indexes; missing or out of range -> None."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        if not isinstance(key, str):
            raise EvaluationError(f"object keys are strings, not {_kind(key)}")
        return value.get(key)
    if isinstance(value, list | tuple | str):
        if not isinstance(key, int) or isinstance(key, bool):
            raise EvaluationError(f"a {_kind(value)} index must be an integer, not {_kind(key)}")
        return value[key] if -len(value) <= key < len(value) else None
    raise EvaluationError(f"cannot index a {_kind(value)}")


def get_slice(value: Any, lo: Any, hi: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, list | tuple | str):
        raise EvaluationError(f"cannot slice a {_kind(value)}")
    for bound in (lo, hi):
        if bound is not None and (not isinstance(bound, int) or isinstance(bound, bool)):
            raise EvaluationError(f"slice bounds must be integers, not {_kind(bound)}")
    out = value[lo:hi]
    return list(out) if isinstance(out, tuple) else out


def to_json_value(value: Any) -> Any:
    """A value an expression computed, as JSON: sets become sorted lists, tuples lists."""
    if isinstance(value, frozenset | set):
        items = [to_json_value(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, tuple | list):
        return [to_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json_value(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------- functions


def _str_arg(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise EvaluationError(f"{name}() takes a string, not {_kind(value)}")
    return value


def _null_in(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``None`` as first argument gives ``None`` (a missing field stays missing)."""

    def wrapper(first: Any, *rest: Any) -> Any:
        return None if first is None else fn(first, *rest)

    return wrapper


def _len(value: Any) -> int:
    if not isinstance(value, str | list | tuple | Mapping | frozenset):
        raise EvaluationError(f"len() takes a string, list or object, not {_kind(value)}")
    return len(value)


def _abs(value: Any) -> Any:
    if not _number(value):
        raise EvaluationError(f"abs() takes a number, not {_kind(value)}")
    return abs(value)


def _extreme(pick: Callable[..., Any], name: str) -> Callable[..., Any]:
    def fn(*args: Any) -> Any:
        items = args[0] if len(args) == 1 and isinstance(args[0], list | tuple | frozenset) else args
        present = [v for v in items if v is not None]
        if not present:
            return None
        try:
            return pick(present)
        except TypeError:
            raise EvaluationError(f"{name}() cannot order {sorted({_kind(v) for v in present})}") from None

    return fn


def _round(value: Any, digits: Any = None) -> Any:
    if not _number(value):
        raise EvaluationError(f"round() takes a number, not {_kind(value)}")
    if digits is None:
        return round(value)
    if not isinstance(digits, int) or abs(digits) > MAX_ROUND_DIGITS:
        raise EvaluationError(f"round() digits must be an integer within ±{MAX_ROUND_DIGITS}")
    return round(value, digits)


def _int(value: Any) -> int:
    if isinstance(value, float) and not math.isfinite(value):
        raise EvaluationError(f"int() of {value}")
    if isinstance(value, str | int | float):
        try:
            return int(value.strip() if isinstance(value, str) else value)
        except ValueError:
            if isinstance(value, str):  # "3.7" -> 3, like a number written as text
                try:
                    return _int(float(value))
                except ValueError:
                    pass
            raise EvaluationError(f"int() of {str(value)[:40]!r}") from None
    raise EvaluationError(f"int() takes a number or a string, not {_kind(value)}")


def _float(value: Any) -> float:
    if isinstance(value, str | int | float):
        try:
            return float(value)
        except (ValueError, OverflowError):
            raise EvaluationError(f"float() of {str(value)[:40]!r}") from None
    raise EvaluationError(f"float() takes a number or a string, not {_kind(value)}")


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | Mapping | frozenset):
        return orjson.dumps(value, default=sorted).decode()
    return str(value)


def _contains(container: Any, item: Any) -> bool:
    return compare("in", item, container)


def _split(text: Any, sep: Any = None, limit: Any = -1) -> list[str]:
    s = _str_arg("split", text)
    if sep is not None:
        sep = _str_arg("split", sep)
        if not sep:
            raise EvaluationError("split() separator is empty")
    if not isinstance(limit, int):
        raise EvaluationError(f"split() limit must be an integer, not {_kind(limit)}")
    return s.split(sep, limit)


def _replace(text: Any, old: Any, new: Any) -> str:
    s, o, n = _str_arg("replace", text), _str_arg("replace", old), _str_arg("replace", new)
    hits = s.count(o) if o else len(s) + 1
    if len(s) + hits * (len(n) - len(o)) > MAX_SEQUENCE:
        raise EvaluationError(f"replace() would build more than {MAX_SEQUENCE} characters")
    return s.replace(o, n)


def _join(items: Any, sep: Any = "") -> str:
    if not isinstance(items, list | tuple):
        raise EvaluationError(f"join() takes a list, not {_kind(items)}")
    glue = _str_arg("join", sep)
    parts = [_str(v) for v in items]
    if sum(map(len, parts)) + len(glue) * max(len(parts) - 1, 0) > MAX_SEQUENCE:
        raise EvaluationError(f"join() would build more than {MAX_SEQUENCE} characters")
    return glue.join(parts)


def _starts(text: Any, prefix: Any) -> bool:
    return _str_arg("startswith", text).startswith(_str_arg("startswith", prefix))


def _ends(text: Any, suffix: Any) -> bool:
    return _str_arg("endswith", text).endswith(_str_arg("endswith", suffix))


MANY = 99  # "any number of arguments"

# name -> (implementation, min args, max args); coalesce/has/exists are compiled specially
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    "len": (_null_in(_len), 1, 1),
    "abs": (_null_in(_abs), 1, 1),
    "min": (_extreme(min, "min"), 1, MANY),
    "max": (_extreme(max, "max"), 1, MANY),
    "round": (_null_in(_round), 1, 2),
    "int": (_null_in(_int), 1, 1),
    "float": (_null_in(_float), 1, 1),
    "str": (_null_in(_str), 1, 1),
    "bool": (bool, 1, 1),
    "lower": (_null_in(lambda s: _str_arg("lower", s).lower()), 1, 1),
    "upper": (_null_in(lambda s: _str_arg("upper", s).upper()), 1, 1),
    "strip": (_null_in(lambda s: _str_arg("strip", s).strip()), 1, 1),
    "startswith": (_null_in(_starts), 2, 2),
    "endswith": (_null_in(_ends), 2, 2),
    "contains": (_null_in(_contains), 2, 2),
    "split": (_null_in(_split), 1, 3),
    "replace": (_null_in(_replace), 3, 3),
    "join": (_null_in(_join), 1, 2),
    "coalesce": (lambda *a: next((v for v in a if v is not None), None), 1, MANY),
}


def function(name: str) -> tuple[Callable[..., Any], int, int]:
    """The implementation and arity of a function (``KeyError`` if unknown)."""
    return FUNCTIONS[name]
