"""Large states in slices (``stateslices``): the same state back, valid JSON either way."""

from __future__ import annotations

import orjson
import pytest

from echo_shared import stateslices


def state(n: int) -> dict[str, object]:
    return {"counts": {f"k{i}": i for i in range(n)}, "next": 7, "empty": {}, "names": ["a"]}


async def test_a_state_in_slices_reads_back_whole_slice_by_slice_and_as_plain_json() -> None:
    s = state(1003)
    raw = await stateslices.dump(s, entries=100)
    # a line per slice (1 set, 11 of counts, 1 empty object) between the mark's and the end's
    assert raw.count(b"\n") == 13 + 1
    assert raw == stateslices.dump_now(s, entries=100)
    head, pieces = stateslices.split_message([raw]) or (b"", [])
    assert head == b"null" and pieces == [(raw, 0, len(raw))]
    assert await stateslices.load_pieces(pieces) == s
    assert stateslices.load_pieces_now(pieces) == s
    # a reader of the version before parses it as JSON: assemble makes the state of it
    assert stateslices.assemble(orjson.loads(raw)) == s


async def test_slices_are_found_inside_a_message_and_the_rest_parses_without_them() -> None:
    raw = await stateslices.dump(state(500), entries=64)
    msg = b'{"task":"count","snapshot":{"out_seq":3,"state":' + raw + b',"taken_at":1.5}}'
    found, pieces = stateslices.split_message([msg]) or (b"", [])
    head = orjson.loads(found)
    assert head == {"task": "count", "snapshot": {"out_seq": 3, "state": None, "taken_at": 1.5}}
    assert await stateslices.load_pieces(pieces) == state(500)
    assert orjson.loads(msg)["snapshot"]["state"][stateslices.SLICED][0] == {
        "set": {"next": 7, "names": ["a"]}
    }


def test_only_large_states_go_in_slices_and_detach_copies_their_objects() -> None:
    assert not stateslices.wants_slices(state(10), over=100)
    assert stateslices.wants_slices(state(101), over=100)
    assert not stateslices.wants_slices([1, 2], over=0)
    s = state(5)
    d = stateslices.detach(s)
    d["counts"]["k0"] = 99  # type: ignore[index]
    assert s["counts"]["k0"] == 0  # type: ignore[index]
    assert stateslices.split_message([orjson.dumps(s)]) is None  # a plain state: nothing to find


async def test_a_corrupt_slice_is_an_error_naming_it() -> None:
    raw = await stateslices.dump(state(300), entries=100)
    bad = raw.replace(b'"k150":150', b'"k150":150}}garbage', 1)
    with pytest.raises(stateslices.SliceError, match="slice 2"):
        await stateslices.load_pieces([(bad, 0, len(bad))])
    not_delta = stateslices.MARK + b'{"merge":[1]}' + stateslices.END
    with pytest.raises(stateslices.SliceError, match="slice 0"):
        stateslices.load_pieces_now([(not_delta, 0, len(not_delta))])
    with pytest.raises(stateslices.SliceError):
        stateslices.assemble({stateslices.SLICED: [{"nope": 1}]})


async def test_a_message_in_parts_gives_its_head_and_its_state_without_being_joined() -> None:
    s = state(5000)
    raw = await stateslices.dump(s, entries=300)
    msg = b'{"kind":"stage","state":' + raw + b',"delta":null}'
    for size in (7, 1000, 4096, len(msg)):  # parts cut anywhere, lines spanning them
        chunks = [msg[i : i + size] for i in range(0, len(msg), size)]
        head, pieces = stateslices.split_message(chunks) or (b"", [])
        assert orjson.loads(head) == {"kind": "stage", "state": None, "delta": None}
        assert stateslices.pieces_len(pieces) == len(raw)
        assert await stateslices.load_pieces(pieces) == s
        reader = stateslices.PiecesReader(pieces)
        out, buf = bytearray(), bytearray(999)
        while n := reader.readinto(buf):
            out += buf[:n]
        assert bytes(out) == raw
    assert stateslices.split_message([b'{"state":{"a":1}}']) is None


async def test_pieces_dumped_join_to_the_dump() -> None:
    s = state(2500)
    assert b"".join(await stateslices.dump_pieces(s)) == stateslices.dump_now(s)


async def test_a_large_tail_after_the_state_and_an_end_cut_by_a_part_are_found() -> None:
    """A staged state's delta comes after the state and may be large (many parts); the
    state's end may be cut between two parts."""
    s = state(3000)
    raw = await stateslices.dump(s, entries=200)
    tail = b',"delta":{"merge":{"counts":{' + b",".join(b'"d%d":%d' % (i, i) for i in range(20000)) + b"}}}}"
    msg = b'{"kind":"stage","state":' + raw + tail
    end = len(b'{"kind":"stage","state":') + len(raw)
    for size in (1000, 4096, 65_536):
        cuts = list(range(0, len(msg), size))
        for cut_at in (end - 1, end - 2, end - 3, end):  # a part boundary inside "\n]}" or after it
            bounds = sorted({*cuts, cut_at})
            chunks = [msg[a:b] for a, b in zip(bounds, [*bounds[1:], len(msg)], strict=True) if b > a]
            head, pieces = stateslices.split_message(chunks) or (b"", [])
            parsed = orjson.loads(head)
            assert parsed["state"] is None and len(parsed["delta"]["merge"]["counts"]) == 20000
            assert stateslices.pieces_len(pieces) == len(raw)
            assert await stateslices.load_pieces(pieces) == s
