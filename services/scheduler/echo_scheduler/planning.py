"""Offline planning: the scheduler's placement without brokers.

    python -m echo_scheduler plan SPEC --devices DEVICES.yaml [--strategy S] [--dataflow-id ID]

prints the ``Placement`` as JSON on stdout (what ``echoctl plan`` renders). SPEC is a
dataflow spec (YAML or JSON); DEVICES a list of device records in the registration format
(``DeviceInfo``: id, tier, capacity, labels, input_streams, runtimes, accelerators, site,
connectivity, links, uplink), or a mapping with such a list under ``devices``; every
device is taken as online. Exit codes: 0 placed; 1 the spec cannot be placed (the reason
on stderr); 2 bad input (a missing or unreadable file, an invalid spec or device record),
always as one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from echo_shared.documents import DocumentError, load_document, load_json
from echo_shared.errors import PlacementError, SpecError
from echo_shared.models import DataflowSpec, DeviceInfo, DeviceRecord, PlacementStrategy
from echo_shared.names import Names
from echo_shared.operators import join_loc

from .placing import place


class InputError(Exception):
    """Bad input: a file that is missing, unreadable, or does not hold what it should."""


def _load(path: str, what: str) -> Any:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} file {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {what} file {path}: {e}") from None
    try:
        return load_json(text) if p.suffix.lower() == ".json" else load_document(text)
    except DocumentError as e:
        where = f" (line {e.line})" if e.line is not None else ""
        raise InputError(f"{what} file {path} is not valid YAML or JSON{where}: {e.problem}") from None


def _errors(e: ValidationError, prefix: str = "") -> str:
    errs = e.errors()
    shown = [f"{join_loc(prefix, err['loc']) or '(top)'}: {err['msg']}" for err in errs[:3]]
    more = f" (and {len(errs) - 3} more)" if len(errs) > 3 else ""
    return "; ".join(shown) + more


def load_spec(path: str) -> DataflowSpec:
    data = _load(path, "spec")
    try:
        return DataflowSpec.model_validate(data)
    except ValidationError as e:
        raise InputError(f"invalid spec {path}: {_errors(e)}") from None


def load_devices(path: str) -> list[DeviceRecord]:
    data = _load(path, "devices")
    if isinstance(data, dict) and "devices" in data:
        data = data["devices"]
    if not isinstance(data, list):
        raise InputError(f"devices file {path} must hold a list of device records")
    out: list[DeviceRecord] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(data):
        try:
            info = DeviceInfo.model_validate(item)
        except ValidationError as e:
            raise InputError(f"invalid device record in {path}: {_errors(e, f'[{i}]')}") from None
        if info.id in seen:
            also = seen[info.id]
            raise InputError(
                f"invalid device record in {path}: [{i}].id: duplicate id {info.id!r} (also [{also}])"
            )
        seen[info.id] = i
        out.append(DeviceRecord.from_info(info, now=0.0))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m echo_scheduler plan", description="Place a dataflow offline."
    )
    ap.add_argument("spec", help="dataflow spec (YAML or JSON)")
    ap.add_argument("--devices", required=True, help="device records (YAML or JSON list)")
    ap.add_argument("--strategy", choices=[s.value for s in PlacementStrategy], help="override the spec's")
    ap.add_argument("--dataflow-id", default="plan", help="dataflow id used in channel names")
    ap.add_argument("--namespace", default="echo", help="namespace of channel names")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = load_spec(args.spec)
        devices = load_devices(args.devices)
        names = Names(args.namespace)
        names.data_topic(args.dataflow_id, "a", "b")  # checks the id
    except (InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)  # noqa: T201
        return 2
    strategy = PlacementStrategy(args.strategy) if args.strategy else None
    try:
        placement = place(args.dataflow_id, spec, devices, names=names, strategy=strategy)
    except SpecError as e:
        print(f"error: invalid spec {args.spec}: {e}", file=sys.stderr)  # noqa: T201
        return 2
    except PlacementError as e:
        print(f"error: cannot be placed: {e}", file=sys.stderr)  # noqa: T201
        return 1
    sys.stdout.write(placement.model_dump_json(indent=2) + "\n")
    return 0
