"""ROS 1 bags decoded through their index equal the record scan (BagScan), message for
message and column for column; a time slice inflates only the chunks it needs."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from robolake import decode
from robolake.bagindex import BagIndex, ChunkInconsistent, IndexRejected
from robolake.simulate import RobotIdentity, simulate_recording

ROBOT = RobotIdentity("robot-042", "delivery", "eu-west")
START = 1_795_766_400_000_000_000


@pytest.fixture(scope="module")
def sim_bag(tmp_path_factory) -> Path:
    from rosbags.rosbag1 import Writer

    out = tmp_path_factory.mktemp("bagindex")
    opened = Writer.__init__

    def small_chunks(self, *args, **kwargs):  # 64 KiB chunks: a slice has chunks to skip
        opened(self, *args, **kwargs)
        self.chunk_threshold = 64 * 1024

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Writer, "__init__", small_chunks)
        truth = simulate_recording(out, ROBOT, START, 8.0, seed=5, fmt="bag", lidar_points=64,
                                   faults=("duplicate_messages", "imu_spikes", "black_frames"))
    return out / truth["file"]


def _scanned(path: Path, start=None, end=None) -> list:
    return list(decode._scanned_bag_messages(path, start, end))


def _decoded_by_scan(path: Path) -> decode.Decoded:
    columns = decode._SliceColumns()
    for message in _scanned(path):
        columns.add(*message)
    return columns.decoded("bag", "ref")


def _assert_same_columns(a: decode.Decoded, b: decode.Decoded) -> None:
    for kind in ("imu", "gps", "lidar", "camera"):
        x, y = getattr(a, kind), getattr(b, kind)
        assert list(x) == list(y), kind
        for col in x:
            assert x[col].dtype == y[col].dtype, (kind, col)
            assert np.array_equal(x[col], y[col], equal_nan=x[col].dtype.kind == "f"), (kind, col)


def _bag_equals_scan(path: Path) -> BagIndex:
    index = BagIndex.read(path)
    messages = list(decode._indexed_bag_messages(index, None, None))
    assert messages == _scanned(path)
    assert index.inflated == len(index.chunks)
    assert list(decode.iter_sensor_messages(path)) == messages
    _assert_same_columns(decode._decode_slice(path, "ref"), _decoded_by_scan(path))
    return index


def test_index_path_equals_scan_on_a_simulated_bag_with_duplicates(sim_bag: Path):
    index = _bag_equals_scan(sim_bag)
    assert len(index.chunks) >= 4  # the slices below have chunks to skip
    decoded = decode._decode_slice(sim_bag, "ref")
    log = decoded.imu["log_ns"]
    assert (np.diff(log) == 0).any()  # the duplicates are there, as in the scan


@pytest.mark.parametrize("name", ["robot_localization_test1_husky.bag",
                                  "sick_rms1000_lms1000_movement_off.bag"])
def test_index_path_equals_scan_on_real_bags(shared_data: Path, name: str):
    index = _bag_equals_scan(shared_data / name)
    assert {c.compression for c in index.chunks} == {"bz2"}  # the guarded codec inflated them


def test_time_slices_inflate_only_their_chunks(sim_bag: Path):
    from rosbags.rosbag1 import Reader

    with Reader(sim_bag) as reader:  # independent of robolake: rosbags' own index
        entries = [e for c in reader.connections for e in reader.indexes[c.id]]
        assert decode._time_span(sim_bag) == (reader.start_time, reader.end_time - 1,
                                              reader.message_count)
        start, end = reader.start_time, reader.end_time
    total = len(BagIndex.read(sim_bag).chunks)
    for lo, hi in [(start + (end - start) // 3, start + (end - start) // 2), (end - 1, end),
                   (start, start + 1)]:
        index = BagIndex.read(sim_bag)
        got = list(decode._indexed_bag_messages(index, lo, hi))
        assert got == _scanned(sim_bag, lo, hi) and got
        assert index.inflated == len({e.chunk_pos for e in entries if lo <= e.time < hi}) < total
    index = BagIndex.read(sim_bag)
    assert list(decode._indexed_bag_messages(index, end + 1, end + 10**9)) == []
    assert index.inflated == 0


def test_a_bag_without_index_is_scanned(sim_bag: Path, tmp_path: Path):
    active = tmp_path / "r.bag.active"
    shutil.copy(sim_bag, active)
    with open(active, "r+b") as f:  # the bag header's index_pos back to 0, as while recording
        f.seek(13)
        (header_len,) = struct.unpack("<I", f.read(4))
        header = f.read(header_len)
        at = header.index(b"index_pos=") + len(b"index_pos=")
        f.seek(17 + at)
        f.write(struct.pack("<Q", 0))
    with pytest.raises(IndexRejected, match="index_pos 0"):
        BagIndex.read(active)
    assert decode._time_span(active) is None  # no parallel slices without an index
    assert list(decode.iter_sensor_messages(active)) == _scanned(sim_bag)
    _assert_same_columns(decode._decode_slice(active, "ref"), _decoded_by_scan(sim_bag))


def test_a_chunk_its_index_misdescribes_falls_back_to_the_scan(sim_bag: Path, tmp_path: Path):
    bad = tmp_path / "bad.bag"
    shutil.copy(sim_bag, bad)
    index = BagIndex.read(bad)
    chunk = index.chunks[2]  # uncompressed: the record's time field is in the file as is
    record = chunk.data_at + int(chunk.offset[5])
    with open(bad, "r+b") as f:
        f.seek(record)
        header = f.read(struct.unpack("<I", f.read(4))[0])
        f.seek(record + 4 + header.index(b"time=") + 5)
        f.write(struct.pack("<I", 7))  # the record's nanoseconds no longer match the index
    with pytest.raises(ChunkInconsistent, match="not the message its index entry names"):
        list(decode._indexed_bag_messages(BagIndex.read(bad), None, None))
    scanned = _scanned(bad)
    assert scanned != _scanned(sim_bag)  # the scan reads the record's own time
    assert list(decode.iter_sensor_messages(bad)) == scanned
    _assert_same_columns(decode._decode_slice(bad, "ref"), _decoded_by_scan(bad))


def test_an_offset_at_the_connection_record_before_its_message(sim_bag: Path, tmp_path: Path):
    """C++ rosbag indexes a connection's first message at the connection record written
    just before it (rosbags' Reader skips it too): followed to the message, same result."""
    from robolake.bagindex import OP_INDEX, _record

    moved = tmp_path / "moved.bag"
    shutil.copy(sim_bag, moved)
    chunk = BagIndex.read(moved).chunks[0]
    first, conn = int(chunk.offset[0]), int(chunk.conn[0])
    plain = open(moved, "rb").read()[chunk.data_at:chunk.data_at + chunk.data_len]
    at = 0  # the last connection record before the first message
    while True:
        end = at + 8 + struct.unpack_from("<I", plain, at)[0]
        end += struct.unpack_from("<I", plain, end - 4)[0]
        if end == first:
            break
        at = end
    with open(moved, "r+b") as f:
        pos = chunk.data_at + chunk.data_len
        while True:
            header, data, after = _record(f, pos, moved.stat().st_size, OP_INDEX)
            if struct.unpack("<I", header[b"conn"])[0] == conn:
                break
            pos = after
        entries = np.frombuffer(data, dtype="<u4").reshape(-1, 3)
        row = int(np.flatnonzero(entries[:, 2] == first)[0])
        f.seek(after - len(data) + 12 * row + 8)
        f.write(struct.pack("<I", at))
    index = BagIndex.read(moved)
    assert index.chunks[0].offset[0] == at < first
    assert list(decode._indexed_bag_messages(index, None, None)) == _scanned(sim_bag)
    _assert_same_columns(decode._decode_slice(moved, "ref"), _decoded_by_scan(sim_bag))
