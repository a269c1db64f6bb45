"""Messages in parts (``mqtt_parts``): split, joined, bounded, and bad parts dropped."""

from __future__ import annotations

import zlib

import pytest

from echo_shared.mqtt_parts import MAX_PARTS, Assembler, Header, PartRejected, split


def parts_of(payload: bytes, size: int) -> list[tuple[bytes, str]]:
    return [(bytes(p), h) for p, h in split(payload, size)]


def test_split_then_join_in_any_order_gives_the_payload_and_every_packet_id() -> None:
    payload = bytes(range(256)) * 41  # 10,496 bytes: 11 parts of 1,000
    parts = parts_of(payload, 1000)
    assert len(parts) == 11 and all(len(p) == 1000 for p, _ in parts[:-1])
    a = Assembler()
    order = [3, 0, 10, 1, 2, 4, 9, 5, 6, 8, 7]
    for n, i in enumerate(order):
        joined, release = a.add("t", parts[i][1], parts[i][0], mid=100 + i)
        assert release == []
        if n < len(order) - 1:
            assert joined is None
            assert a.held == sum(len(parts[j][0]) for j in order[: n + 1])
    assert joined is not None
    assert joined.payload == payload
    assert joined.mids == [100 + i for i in range(11)]
    assert a.held == 0 and a.joined == 1


def test_a_duplicate_part_is_taken_once_and_its_older_delivery_released() -> None:
    parts = parts_of(b"x" * 30, 10)
    a = Assembler()
    a.add("t", parts[0][1], parts[0][0], mid=1)
    joined, release = a.add("t", parts[0][1], parts[0][0], mid=7)  # redelivered
    assert joined is None and release == [1]
    a.add("t", parts[1][1], parts[1][0], mid=2)
    joined, _ = a.add("t", parts[2][1], parts[2][0], mid=3)
    assert joined is not None and joined.payload == b"x" * 30 and joined.mids == [7, 2, 3]


def test_two_transfers_on_one_topic_do_not_mix() -> None:
    one, two = parts_of(b"a" * 20, 10), parts_of(b"b" * 20, 10)
    a = Assembler()
    assert a.add("t", one[0][1], one[0][0], 1)[0] is None
    assert a.add("t", two[0][1], two[0][0], 2)[0] is None
    j2, _ = a.add("t", two[1][1], two[1][0], 3)
    j1, _ = a.add("t", one[1][1], one[1][0], 4)
    assert j1 is not None and j2 is not None
    assert (j1.payload, j2.payload) == (b"a" * 20, b"b" * 20)


def test_a_corrupt_part_drops_its_transfer_and_releases_every_part() -> None:
    parts = parts_of(b"y" * 30, 10)
    a = Assembler()
    a.add("t", parts[0][1], parts[0][0], mid=1)
    joined, release = a.add("t", parts[1][1], b"z" * 10, mid=2)  # checksum mismatch
    assert joined is None and sorted(release) == [1, 2]
    assert a.dropped == {"bad part": 1} and a.held == 0
    # the rest of that transfer is released quietly, not counted again
    assert a.add("t", parts[2][1], parts[2][0], mid=3) == (None, [3])
    assert a.dropped == {"bad part": 1}


def test_what_is_held_is_bounded_across_transfers() -> None:
    a = Assembler(max_bytes=25)
    big = parts_of(b"q" * 30, 10)
    assert a.add("t", big[0][1], big[0][0], mid=1) == (None, [1])  # says 30 bytes: refused at once
    first, second = parts_of(b"r" * 20, 10), parts_of(b"s" * 20, 10)
    a.add("t", first[0][1], first[0][0], mid=2)
    a.add("u", second[0][1], second[0][0], mid=3)
    joined, release = a.add("u", second[1][1], second[1][0], mid=4)  # 30 held: over 25
    assert joined is None and sorted(release) == [3, 4]
    assert a.dropped == {"too large": 2}
    joined, _ = a.add("t", first[1][1], first[1][0], mid=5)
    assert joined is not None and joined.payload == b"r" * 20 and a.held == 0


def test_an_idle_transfer_expires_and_a_new_connection_forgets_what_was_held() -> None:
    parts = parts_of(b"w" * 20, 10)
    a = Assembler(idle_seconds=10)
    a.add("t", parts[0][1], parts[0][0], mid=1, now=100.0)
    assert a.expire(now=105.0) == []
    assert a.expire(now=111.0) == [1] and a.dropped == {"incomplete": 1} and a.held == 0
    b = Assembler()
    b.add("t", parts[0][1], parts[0][0], mid=1)
    b.reset()  # the broker redelivers the unacknowledged parts with new packet ids
    assert b.held == 0
    b.add("t", parts[0][1], parts[0][0], mid=11)
    joined, _ = b.add("t", parts[1][1], parts[1][0], mid=12)
    assert joined is not None and joined.mids == [11, 12]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc 0 1 10",
        "abc 0 1 10 x",
        "a-b 0 1 10 5",
        "abc 1 1 10 5",
        "abc 0 0 10 5",
        "abc -1 2 10 5",
        f"abc 0 {MAX_PARTS + 1} 10 5",
        "x" * 40 + " 0 1 10 5",
    ],
)
def test_a_malformed_header_is_rejected_with_a_reason(text: str) -> None:
    with pytest.raises(PartRejected) as e:
        Header.parse(text)
    assert e.value.reason == "bad header"
    a = Assembler()
    assert a.add("t", text, b"", mid=9) == (None, [9])
    assert a.dropped == {"bad header": 1}


def test_parts_that_add_up_to_another_size_are_dropped() -> None:
    a = Assembler()
    head = f"abc 0 2 5 {zlib.crc32(b'12345678')}"
    a.add("t", head, b"12345678", mid=1)  # 8 bytes of a transfer said to be 5
    assert a.dropped == {"bad part": 1} and a.held == 0


def test_too_many_parts_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="parts"):
        list(split(b"x" * (MAX_PARTS + 1), 1))
