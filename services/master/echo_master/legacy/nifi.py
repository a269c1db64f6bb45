"""NiFi's conventions, as the original DAGs use them: time periods, file filters, command
arguments, broker URIs and property defaults."""

from __future__ import annotations

import re

# NiFi's defaults: a property left at its default is not reported as without effect
NIFI_DEFAULTS = {
    "Batch Size": "10",
    "Minimum File Age": "0 sec",
    "Minimum File Size": "0 B",
    "Polling Interval": "0 sec",
    "Log Payload": "false",
    "Redirect Error Stream": "false",
}
_UNITS = {
    name: seconds
    for names, seconds in (
        ("ns nano nanos nanosecond nanoseconds", 1e-9),
        ("ms milli millis millisecond milliseconds", 1e-3),
        ("s sec secs second seconds", 1.0),
        ("m min mins minute minutes", 60.0),
        ("h hr hrs hour hours", 3600.0),
        ("d day days", 86400.0),
        ("w wk wks week weeks", 604800.0),
    )
    for name in names.split()
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")


def parse_duration(text: str) -> float:
    """A NiFi time period (``"30 sec"``, ``"5 min"``, ``"100 millis"``) in seconds.

    Raises ``ValueError`` with a message saying what is accepted.
    """
    m = _DURATION.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise ValueError(
            f"{text!r} is not a time period: expected a number and a unit such as "
            f"'30 sec', '5 min', '100 millis', '2 hours'"
        )
    return float(m.group(1)) * _UNITS[unit]


def literal_name(pattern: str) -> str | None:
    """The file name a NiFi ``File Filter`` (a regex) matches, if it matches exactly one.

    ``TAXI_sample_data_senml.csv`` -> itself (an unescaped ``.`` is read as a dot, which is
    what its author meant); ``.*\\.csv`` -> None.
    """
    text = pattern.replace(r"\.", ".")
    if not text or re.search(r"[\\^$*+?()\[\]{}|]", text) or text in (".", ".."):
        return None
    return text


NIFI_ANY = r"[^\.].*"  # GetFile's default File Filter: every name not starting with '.'


def glob_of(pattern: str) -> str | None:
    """A NiFi ``File Filter`` (a Java regex matched against the whole name) as a glob.

    ``.*\\.csv`` -> ``*.csv``, ``img_.\\.png`` -> ``img_?.png``, ``[^\\.].*`` -> ``*``; a filter that
    is not a regex but a glob (``*.csv``) is taken as it is. None when the regex has no glob
    equivalent (alternation, groups, counted repeats).
    """
    if pattern == NIFI_ANY:
        return "*"
    try:
        re.compile(pattern)
    except re.error:
        return pattern if re.search(r"[*?\[]", pattern) else None
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            lit = pattern[i + 1]
            if lit.isalnum():  # \d, \w, \s...: classes, not letters
                return None
            out.append(f"[{lit}]" if lit in "*?[" else lit)
            i += 2
            continue
        if c == ".":
            nxt = pattern[i + 1] if i + 1 < n else ""
            if nxt == "*":
                out.append("*")
                i += 2
                continue
            if nxt == "+":
                out.append("?*")
                i += 2
                continue
            out.append("?")
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                return None
            body = pattern[i + 1 : end].replace("\\", "")
            out.append("[" + ("!" + body[1:] if body.startswith("^") else body) + "]")
            i = end
        elif (c == "^" and i == 0) or (c == "$" and i == n - 1):
            pass
        elif c in "()|{}+*?^$":
            return None
        else:
            out.append(c)
        i += 1
    return "".join(out) or None


ARG_BREAKS = "\t\r\n"


def split_args(text: str | None, delimiter: str) -> list[str]:
    """NiFi's ``ExecuteProcess.splitArgs``: split on the delimiter (and tab/CR/LF) outside ``"``."""
    if text is None:
        return []
    args: list[str] = []
    current: list[str] = []
    quoted = False
    for c in text:
        if c in ARG_BREAKS or c == delimiter:
            if quoted:
                current.append(c)
            else:
                args.append("".join(current))
                current = []
        elif c == '"':
            quoted = not quoted
        else:
            current.append(c)
    args.append("".join(current))
    return args


def mqtt_url(uri: str) -> str:
    """NiFi's ``tcp://host:port`` / ``ssl://host:port`` -> ``mqtt://`` / ``mqtts://``."""
    scheme, sep, rest = uri.strip().partition("://")
    if not sep:
        return f"mqtt://{uri.strip()}"
    return (
        {"tcp": "mqtt", "ssl": "mqtts", "ws": "ws", "wss": "wss"}.get(scheme.lower(), scheme) + "://" + rest
    )
