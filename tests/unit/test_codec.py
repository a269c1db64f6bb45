"""The hot-path data codec produces exactly the shape of ``messages.DataMessage``."""

from __future__ import annotations

import pytest

from echo_shared.codec import BadDataMessage, decode, encode_eos, encode_records
from echo_shared.messages import DataMessage


def test_records_match_the_model_both_ways() -> None:
    raw = encode_records("gen", 2, [(1, {"seq": 0}), (2, {"seq": 1, "x": [1, "a"]})])
    model = DataMessage.from_bytes(raw)
    assert model.producer == "gen" and model.generation == 2 and not model.eos
    assert model.records == [(1, {"seq": 0}), (2, {"seq": 1, "x": [1, "a"]})]
    d = decode(model.to_bytes())
    assert (d.producer, d.generation, d.eos, d.last_seq) == ("gen", 2, False, None)
    assert [tuple(r) for r in d.records] == model.records


def test_end_of_stream() -> None:
    model = DataMessage.from_bytes(encode_eos("gen", 1, 42))
    assert model.eos and model.last_seq == 42 and model.records == []


@pytest.mark.parametrize("payload", [b"", b"not json", b"[]", b'{"producer": "x"}'])
def test_garbage_is_rejected(payload: bytes) -> None:
    with pytest.raises(BadDataMessage):
        decode(payload)
