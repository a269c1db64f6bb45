"""The on-disk spool of an output channel: order, limits, drops, recovery, reclaim."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from echo_agent.dataplane.spool import HEADER, Entry, Skipped, Spool


def drain(spool: Spool) -> list[Entry | Skipped]:
    out = []
    while (item := spool.next()) is not None:
        out.append(item)
    return out


def fill(spool: Spool, first: int, last: int, size: int = 100) -> None:
    for seq in range(first, last + 1):
        spool.append(seq, seq, 1, seq.to_bytes(4, "big") * (size // 4))


def test_messages_come_back_in_order_and_files_are_private(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    spool.open()
    fill(spool, 1, 1000)
    items = drain(spool)
    assert [i.last for i in items] == list(range(1, 1001))
    assert all(isinstance(i, Entry) and i.payload[:4] == i.last.to_bytes(4, "big") for i in items)
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700
    for seg in (tmp_path / "s").glob("*.seg"):
        assert stat.S_IMODE(seg.stat().st_mode) == 0o600
    assert spool.next() is None and not spool.unread


def test_space_is_reclaimed_only_once_read_and_confirmed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", segment_bytes=64 << 10)
    spool.open()
    fill(spool, 1, 3000)
    segments = len(list((tmp_path / "s").glob("*.seg")))
    assert segments > 3
    spool.release(3000)
    assert spool.size > 0, "nothing read yet: nothing may go"
    drain(spool)
    spool.release(1500)
    left = len(list((tmp_path / "s").glob("*.seg")))
    assert 0 < left < segments
    spool.release(3000)
    assert spool.empty and spool.size == 0
    assert not list((tmp_path / "s").glob("*.seg"))


def test_drop_oldest_counts_exactly_and_reports_the_gap(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=64 << 10, overflow="drop_oldest")
    spool.open()
    fill(spool, 1, 5000)
    assert spool.size <= 64 << 10
    assert spool.dropped > 0
    items = drain(spool)
    skipped = [i for i in items if isinstance(i, Skipped)]
    entries = [i for i in items if isinstance(i, Entry)]
    assert sum(s.records for s in skipped) == spool.dropped
    covered = sorted([seq for s in skipped for seq in range(s.first, s.last + 1)] + [e.last for e in entries])
    assert covered == list(range(1, 5001)), "every seq is either sent or reported skipped, once"
    assert entries[-1].last == 5000, "the newest are kept"


def test_block_never_drops(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=64 << 10, overflow="block")
    spool.open()
    n = 0
    while not spool.full(100):
        n += 1
        spool.append(n, n, 1, b"x" * 100)
    assert spool.dropped == 0
    assert spool.size + HEADER.size + 100 > 64 << 10
    assert [i.last for i in drain(spool)] == list(range(1, n + 1))


def test_what_was_sent_before_the_cut_is_never_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=64 << 10, overflow="drop_oldest")
    spool.open()
    for seq in range(1, 101):
        spool.append(seq, seq, 0, b"s" * 100, sent=True)
    fill(spool, 101, 3000)
    items = drain(spool)
    assert [i.last for i in items[:100]] == list(range(1, 101))
    assert all(isinstance(i, Entry) for i in items[:100])


def test_too_old_is_dropped_whatever_the_policy(tmp_path: Path) -> None:
    now = [1000.0]
    spool = Spool(tmp_path / "s", max_age=60, overflow="block", segment_bytes=4096, clock=lambda: now[0])
    spool.open()
    fill(spool, 1, 100)
    now[0] += 61
    fill(spool, 101, 110)
    items = drain(spool)
    assert spool.dropped >= 1
    sent = [i.last for i in items if isinstance(i, Entry)]
    assert sent[-10:] == list(range(101, 111))


def test_a_restart_recovers_cuts_a_torn_tail_and_what_the_checkpoint_does_not_cover(tmp_path: Path) -> None:
    d = tmp_path / "s"
    spool = Spool(d, fsync="never")
    spool.open()
    fill(spool, 1, 500)
    spool.sync()
    spool.close()
    seg = sorted(d.glob("*.seg"))[-1]
    with open(seg, "ab") as f:  # a write cut in the middle by a crash
        f.write(HEADER.pack(0, 1000, 501, 501, 1, 0.0) + b"partial")
    again = Spool(d)
    again.open(keep_through=400)
    items = drain(again)
    assert [i.last for i in items] == list(range(1, 401))
    assert os.path.getsize(sorted(d.glob("*.seg"))[-1]) == sum(
        s.size for s in again.segments if s.path == sorted(d.glob("*.seg"))[-1]
    )
    # recovered messages may have been delivered: never dropped
    assert all(s.sent for s in again.segments)


def test_remove_deletes_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    spool.open()
    fill(spool, 1, 10)
    spool.close(remove=True)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("fsync", ["always", "checkpoint", "never"])
def test_every_fsync_policy_keeps_what_was_written(tmp_path: Path, fsync: str) -> None:
    spool = Spool(tmp_path / "s", fsync=fsync)  # type: ignore[arg-type]
    spool.open()
    fill(spool, 1, 50)
    spool.sync()
    again = Spool(tmp_path / "s")
    again.open()
    assert [i.last for i in drain(again)] == list(range(1, 51))


def test_dropped_ranges_are_told_again_after_a_restart_until_confirmed(tmp_path: Path) -> None:
    d = tmp_path / "s"
    spool = Spool(d, max_bytes=64 << 10, overflow="drop_oldest")
    spool.open()
    fill(spool, 1, 3000)
    dropped = spool.dropped
    assert dropped > 0
    spool.sync()
    spool.close()  # the agent dies before anything was sent
    again = Spool(d, max_bytes=64 << 10, overflow="drop_oldest")
    again.open(keep_through=3000)
    items = drain(again)
    skipped = [i for i in items if isinstance(i, Skipped)]
    assert sum(s.records for s in skipped) == dropped, "the consumer still learns what was dropped"
    covered = sorted(
        [q for s in skipped for q in range(s.first, s.last + 1)]
        + [i.last for i in items if isinstance(i, Entry)]
    )
    assert covered == list(range(1, 3001))
    again.release(3000)
    assert not list(d.iterdir()), "tombstones go once the consumer confirmed past them"


def test_a_range_spooled_twice_keeps_both_copies_apart(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    spool.open()
    spool.append(4, 4, 0, b"unconfirmed at the first cut", sent=True)
    spool.append(5, 5, 1, b"spooled while cut off")
    spool.append(4, 4, 0, b"unconfirmed again at the second cut", sent=True)  # same first seq
    assert len(list((tmp_path / "s").glob("*.seg"))) == 3, "each copy in a file of its own"
    items = drain(spool)
    assert [(i.last, i.payload[:5]) for i in items if isinstance(i, Entry)] == [
        (4, b"uncon"),
        (5, b"spool"),
        (4, b"uncon"),
    ]
    spool.release(5)
    assert spool.empty and not list((tmp_path / "s").glob("*.seg"))
