"""One robot's readings of one time window as a ROS 2 MCAP file, byte for byte the same
for the same readings (sorted, de-duplicated, no wall-clock anywhere in the file)."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime

from robolake.raw import safe_file_name
from robolake.simulate.ros import Codec

MSGTYPES = {"imu": "sensor_msgs/msg/Imu", "gps": "sensor_msgs/msg/NavSatFix"}
FRAMES = {"imu": "imu_link", "gps": "gps"}
LIBRARY = "robolake-stream-writer"
_IDENTITY_QUATERNION = (0.0, 0.0, 0.0, 1.0)


def reading_key(r: dict) -> tuple:
    """Sort and de-duplication key: the same reading sent twice is kept once."""
    values = tuple(sorted((k, v) for k, v in r.items() if k not in ("sensor", "topic", "ts_ns")))
    return (r["ts_ns"], r["sensor"], r["topic"], values)


def window_digest(identity: dict[str, str], window_start_ns: int, readings: list[dict]) -> str:
    h = hashlib.sha256(json.dumps([identity, window_start_ns], sort_keys=True).encode())
    for r in readings:
        h.update(json.dumps(reading_key(r), separators=(",", ":")).encode())
    return h.hexdigest()


def window_key(tenant: str, identity: dict[str, str], window_start_ns: int,
               digest: str) -> str:
    """`stream/date=YYYY-MM-DD/hour=HH/<tenant>__<robot>_<window start>_<digest>.mcap`:
    the window's readings decide the key, so a rewrite after a crash lands on the same key
    with the same bytes, and late readings of a window already written get a file of their
    own."""
    start = datetime.fromtimestamp(window_start_ns / 1e9, UTC)
    name = (f"{safe_file_name(tenant)}__{safe_file_name(identity['robot_id'])}_"
            f"{start:%Y%m%dT%H%M%S}_{digest[:16]}.mcap")
    return f"stream/date={start:%Y-%m-%d}/hour={start:%H}/{name}"


def build_window_mcap(identity: dict[str, str], readings: list[dict]) -> bytes:
    """The MCAP bytes: the `robot` metadata record first, then IMU and NavSatFix messages in
    time order (log time = header stamp = the reading's ts_ns)."""
    from mcap.well_known import MessageEncoding, Profile, SchemaEncoding
    from mcap.writer import CompressionType, Writer

    codec = Codec(ros1=False)
    ordered = sorted({reading_key(r): r for r in readings}.values(), key=reading_key)
    buf = io.BytesIO()
    writer = Writer(buf, compression=CompressionType.ZSTD)
    writer.start(profile=Profile.ROS2, library=LIBRARY)
    writer.add_metadata("robot", {k: identity[k] for k in ("robot_id", "robot_type", "region")})
    schemas: dict[str, int] = {}
    channels: dict[tuple[str, str], int] = {}
    for sensor, msgtype in MSGTYPES.items():
        schemas[sensor] = writer.register_schema(msgtype, SchemaEncoding.ROS2,
                                                 codec.msgdef(msgtype)[0].encode())
    for seq, r in enumerate(ordered):
        channel_key = (r["sensor"], r["topic"])
        if channel_key not in channels:
            channels[channel_key] = writer.register_channel(
                r["topic"], MessageEncoding.CDR, schemas[r["sensor"]])
        header = codec.header(r["ts_ns"], FRAMES[r["sensor"]], seq)
        if r["sensor"] == "imu":
            msg = codec.imu(header, _IDENTITY_QUATERNION, (r["gx"], r["gy"], r["gz"]),
                            (r["ax"], r["ay"], r["az"]))
        else:
            msg = codec.navsatfix(header, r["status"], r["lat"], r["lon"], r["alt"])
        data = codec.serialize(msg, MSGTYPES[r["sensor"]])
        writer.add_message(channels[channel_key], r["ts_ns"], data, r["ts_ns"], sequence=seq)
    writer.finish()
    return buf.getvalue()
