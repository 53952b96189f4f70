"""What each column of the lake's tables means, once: the Dagster UI shows it beside the
column schema of every asset, and the catalog may reuse it.

`describe(name)` answers for any column name: an exact entry, else a rule for a family
(`*_ns` timestamps, `imu_*` aligned means, rule counts), else "" (then the schema test fails,
so a new column gets its sentence).
"""

from __future__ import annotations

_NS = "int64 nanoseconds since the Unix epoch, UTC"

COLUMNS = {
    # identity and keys
    "upload_id": "sha256 of the uploaded bytes (content address of the recording)",
    "landing_key": "key of the file in the landing zone",
    "file_name": "file name as uploaded",
    "format": "recording format: mcap, bag (ROS 1) or ulg (PX4 ULog)",
    "robot_id": "robot that recorded it (MCAP `robot` record, sidecar or upload metadata)",
    "robot_type": "robot type: the second partition dimension",
    "region": "region the robot operates in",
    "identity_source": "where the identity came from: mcap, sidecar or s3-metadata",
    "date": "UTC date (YYYY-MM-DD) of the row's timestamp: the daily partition",
    "topic": "ROS topic the message was recorded on",
    "lidar_topic": "LiDAR topic of the frame the row is aligned to",
    # raw/uploads
    "duration_s": "recording length in seconds",
    "message_count": "messages in the recording",
    "topics": "per topic: message type, sensor kind, message count, longest gap (ns)",
    "size_bytes": "size of the recording in bytes",
    "quality_score": "0-100: > 90 accepted, 60-90 accepted and flagged, < 60 quarantined",
    "status": "accepted, flagged, quarantined or duplicate",
    "reasons": "why points were deducted or the file was refused, naming file and field",
    "raw_key": "key of the immutable copy under raw/files/ (or raw/quarantine/)",
    "messages_digest": "sha256 of topics, counts and time ranges: finds re-exports",
    # sensors
    "ax": "linear acceleration x, m/s²", "ay": "linear acceleration y, m/s²",
    "az": "linear acceleration z, m/s²", "gx": "angular velocity x, rad/s",
    "gy": "angular velocity y, rad/s", "gz": "angular velocity z, rad/s",
    "qx": "orientation quaternion x", "qy": "orientation quaternion y",
    "qz": "orientation quaternion z", "qw": "orientation quaternion w",
    "lat": "latitude, degrees (WGS84)", "lon": "longitude, degrees (WGS84)",
    "alt": "altitude, m",
    "points_total": "points in the scan", "points_kept": "points within 200 m, not (0,0,0)",
    "points_far": "points dropped beyond 200 m",
    "lidar_points_far": "LiDAR points dropped beyond 200 m (summed over the frames)",
    "range_min_m": "nearest kept return, m",
    "range_mean_m": "mean range of the kept returns, m", "range_max_m": "farthest kept return, m",
    "payload_ref": "where the payload is: <raw_key>#<topic>@<log time ns>",
    "bytes": "compressed image size in bytes", "width": "image width, px",
    "height": "image height, px", "brightness": "mean brightness 0-1 (1/8-scale decode)",
    "is_black": "all-black frame (no 8×8 block brighter than 16/255): never matched",
    # aligned frames (data contract)
    "camera_dt_ms": "camera frame time minus LiDAR frame time, ms (null unless |dt| < 16 ms)",
    "imu_count": "IMU samples averaged in ±50 ms around the frame",
    "gps_lat": "latitude interpolated between bracketing fixes, degrees (null outside GPS)",
    "gps_lon": "longitude interpolated between bracketing fixes, degrees (null outside GPS)",
    "gps_alt": "altitude interpolated between bracketing fixes, m (null outside GPS)",
    "lidar_points": "points kept after range filtering",
    # quality reports
    "aligned_frames": "aligned frames written for the upload",
    "clock_corrected": "a constant header/log clock offset was subtracted",
    "null_rate": "share of null aligned values among the sensors the recording has",
    "outlier_rate": "share of IMU samples with |a| > 20 m/s²",
    "duplicate_rate": "share of messages that were exact duplicates",
    "max_gap_s": "longest gap of IMU, LiDAR or camera, s",
    "latency_s": "seconds from arrival in the landing zone to the first cleaning",
    "notes": "what the cleaning noticed (clock fallback, no LiDAR, overlaps)",
}

_FAMILIES = (
    ("_duplicates", "exact duplicates removed (same robot, topic, timestamp, values)"),
    ("_overlap", "rows dropped because another upload of the robot already holds them"),
    ("_outliers", "samples removed as outliers (|a| > 20 m/s²)"),
    ("_invalid", "fixes removed (no fix or NaN)"),
    ("_black", "all-black frames flagged (kept, never matched)"),
    ("_samples", "samples decoded (before cleaning)"),
    ("_fixes", "fixes decoded (before cleaning)"),
    ("_frames", "frames decoded (before cleaning)"),
)


# the same name meaning something else in one table
_BY_TABLE = {"cleaned/gps": {"status": "NavSatFix status (< 0: no fix; those rows are removed)"}}


def describe(name: str, table: str = "") -> str:
    """One sentence saying what a column of `table` holds ('' when nobody wrote one)."""
    if name in _BY_TABLE.get(table, {}):
        return _BY_TABLE[table][name]
    if name in COLUMNS:
        return COLUMNS[name]
    if name.endswith("_ns"):
        what = {"ts_ns": "sensor header time", "log_ns": "recorder log time",
                "start_ns": "first message", "end_ns": "last message",
                "arrived_ns": "arrival in the landing zone", "ingested_ns": "indexing time",
                "camera_ts_ns": "nearest camera frame (null unless |dt| < 16 ms)",
                "clock_offset_ns": "header minus log time subtracted",
                "cleaned_ns": "first cleaning"}.get(name, name[:-3].replace("_", " "))
        return f"{what}, {_NS}"
    if name.startswith("imu_") and len(name) == 6:
        return f"mean {COLUMNS.get(name[4:], name)} of the non-outlier samples in ±50 ms"
    for suffix, text in _FAMILIES:
        if name.endswith(suffix):
            return f"{name[: -len(suffix)].replace('_', ' ')}: {text}"
    return ""
