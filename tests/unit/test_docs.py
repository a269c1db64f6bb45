"""The documentation names every operator the catalogue has."""

from __future__ import annotations

from pathlib import Path

from echo_shared.catalogue import CATALOGUE

ROOT = Path(__file__).resolve().parents[2]


def test_every_operator_is_documented() -> None:
    text = (ROOT / "docs" / "operators.md").read_text()
    missing = [name for name in CATALOGUE if f"`{name}`" not in text]
    assert not missing, f"add these to docs/operators.md: {missing}"
