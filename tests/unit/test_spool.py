"""The on-disk spool: frames, segments, order, bound, truncated files."""

from __future__ import annotations

from pathlib import Path

from producers.spool import Frame, Spool, decode_frames, encode_frame


def frame(i: int, size: int = 10) -> Frame:
    return Frame(b"r:0", f"{i:06d}".encode() + b"x" * size, records=i + 1)


def replay_all(spool: Spool) -> list[Frame]:
    spool.seal()
    out = []
    for path in spool.sealed():
        out += spool.read(path)
        spool.remove(path)
    return out


def test_frames_round_trip_and_replay_oldest_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    frames = [frame(i) for i in range(40)]
    for i in range(0, 40, 3):
        spool.append(frames[i : i + 3])
    assert len(spool.sealed()) > 3  # rotated into several segments
    assert replay_all(spool) == frames
    assert not spool and spool.size == 0
    assert list(tmp_path.glob("*.spool")) == []


def test_reopened_spool_keeps_segments_and_numbering(tmp_path: Path) -> None:
    first = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    first.append([frame(i) for i in range(10)])
    first.close()
    second = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    second.append([frame(i) for i in range(10, 15)])
    assert replay_all(second) == [frame(i) for i in range(15)]


def test_truncated_tail_is_skipped_rest_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16)
    spool.append([frame(i) for i in range(5)])
    spool.close()
    (path,) = tmp_path.glob("*.spool")
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # power loss in the middle of the last frame
    reopened = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16)
    assert replay_all(reopened) == [frame(i) for i in range(4)]


def test_corrupt_frame_stops_reading_there(tmp_path: Path) -> None:
    data = b"SSP1" + b"".join(encode_frame(frame(i)) for i in range(3))
    one = len(encode_frame(frame(0)))
    damaged = bytearray(data)
    damaged[4 + one + 20] ^= 0xFF  # flip a byte inside the second frame's value
    frames, used = decode_frames(bytes(damaged))
    assert frames == [frame(0)] and used == 4 + one
    assert decode_frames(b"garbage") == ([], 0)
    assert decode_frames(b"") == ([], 0)


def test_bound_drops_oldest_segments_and_counts_records(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000, segment_bytes=300)
    frames = [frame(i, size=50) for i in range(40)]
    spool.append(frames)
    assert spool.size <= 1000
    kept = replay_all(spool)
    assert kept == frames[-len(kept) :]  # the newest survive, in order
    lost = frames[: len(frames) - len(kept)]
    assert spool.dropped_records == sum(f.records for f in lost) > 0
