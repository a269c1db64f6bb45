"""Incoming deduplication and end of stream (pure logic of the data plane)."""

from __future__ import annotations

from echo_agent.dataplane.intake import Inputs
from echo_shared.codec import Decoded


def msg(producer: str, records: list[list[object]], eos: bool = False, last: int | None = None) -> Decoded:
    return Decoded(producer, 1, records, eos, last)


def test_duplicates_are_dropped_per_producer() -> None:
    inputs = Inputs(["a", "b"])
    assert inputs.fresh(msg("a", [[1, "x"], [2, "y"]])) == ["x", "y"]
    assert inputs.fresh(msg("a", [[2, "y"], [3, "z"]])) == ["z"]  # redelivered 2
    assert inputs.fresh(msg("b", [[1, "q"]])) == ["q"]  # another producer's seq 1
    assert inputs.duplicates == 1


def test_done_only_after_every_producer_ended_and_delivered_everything() -> None:
    inputs = Inputs(["a", "b"])
    inputs.fresh(msg("a", [[1, 1]]))
    inputs.fresh(msg("a", [], eos=True, last=1))
    assert not inputs.done
    inputs.fresh(msg("b", [], eos=True, last=2))
    assert not inputs.done  # b's records 1..2 not seen yet
    inputs.fresh(msg("b", [[1, 1], [2, 2]]))
    assert inputs.done


def test_restored_high_water_marks() -> None:
    inputs = Inputs(["a"], hwm={"a": 10})
    assert inputs.fresh(msg("a", [[9, "old"], [11, "new"]])) == ["new"]
