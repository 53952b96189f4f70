"""The catalog: every Delta table and file area of the lake, its owner, its description and
the classification of each column, declared here once.

Levels, from least to most sensitive: `public`, `internal`, `confidential`, `restricted`.
Camera images and GPS positions are personal data (people in view, places visited):
`restricted`. A table's level is its most sensitive column's. Dagster asset metadata
(owners, tags, `dagster/column_schema`), `robolake catalog search` and the erase of a
robot's data all read this module; a test writes every table and fails on any column
declared here that the table lacks, or any column it has that is not declared here.
"""

from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("public", "internal", "confidential", "restricted")
PUBLIC, INTERNAL, CONFIDENTIAL, RESTRICTED = LEVELS

OWNERS = {  # Dagster accepts "team:NAME" or an e-mail address as an owner
    "ingest": "team:data-platform",
    "perception": "team:perception",
    "ml": "team:ml-platform",
    "governance": "team:governance",
}


def most_sensitive(levels) -> str:
    """The most sensitive of some classification levels (`public` for none)."""
    return max(levels, key=LEVELS.index, default=PUBLIC)


@dataclass(frozen=True)
class Column:
    name: str
    description: str
    classification: str = INTERNAL
    # columns of other tables this one is computed from ("table_key.column")
    derived_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    key: str  # path under the lake root
    layer: str  # raw, cleaned, features, datasets, ops
    owner: str
    description: str
    columns: tuple[Column, ...]
    robot_column: str | None = "robot_id"  # rows of one robot (what an erase deletes)

    @property
    def classification(self) -> str:
        return most_sensitive(c.classification for c in self.columns)

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"{self.key} has no column {name!r} in the catalog")


@dataclass(frozen=True)
class FileArea:
    """Objects under a prefix that are not a Delta table (raw copies, caches, shards)."""

    prefix: str
    layer: str
    owner: str
    description: str
    classification: str


def _c(name: str, description: str, level: str = INTERNAL, *derived: str) -> Column:
    return Column(name, description, level, tuple(derived))


# ------------------------------------------------------------------ shared column groups

_IDENTITY = (
    _c("robot_id", "Robot that recorded the data (fleet id; pseudonymous, the subject of an "
                   "erase)", CONFIDENTIAL),
    _c("robot_type", "Robot model family, e.g. delivery, warehouse_amr"),
    _c("region", "Operating region of the robot"),
)
_SENSOR_ROW = (
    *_IDENTITY,
    _c("date", "UTC day (YYYY-MM-DD) of ts_ns; partition column"),
    _c("upload_id", "sha256 of the recording's bytes (raw/uploads key)"),
    _c("topic", "ROS topic the message came from"),
    _c("ts_ns", "Sensor time, ns since the Unix epoch (UTC), clock-corrected"),
    _c("log_ns", "Time the recorder logged the message, ns since the Unix epoch"),
)


def _derived(table: str, cols: tuple[Column, ...]) -> tuple[Column, ...]:
    """The same columns, each derived from the column of the same name in `table`."""
    return tuple(Column(c.name, c.description, c.classification, (f"{table}.{c.name}",))
                 for c in cols)


_IMU = tuple(_c(n, d) for n, d in (
    ("ax", "Linear acceleration x, m/s²"), ("ay", "Linear acceleration y, m/s²"),
    ("az", "Linear acceleration z, m/s²"), ("gx", "Angular velocity x, rad/s"),
    ("gy", "Angular velocity y, rad/s"), ("gz", "Angular velocity z, rad/s"),
    ("qx", "Orientation quaternion x"), ("qy", "Orientation quaternion y"),
    ("qz", "Orientation quaternion z"), ("qw", "Orientation quaternion w")))
_GPS = (
    _c("lat", "Latitude, degrees WGS84 (a place the robot was: personal data)", RESTRICTED),
    _c("lon", "Longitude, degrees WGS84 (a place the robot was: personal data)", RESTRICTED),
    _c("alt", "Altitude above the WGS84 ellipsoid, m", RESTRICTED),
    _c("status", "NavSatFix status (-1 no fix)"),
)
_LIDAR = (
    _c("points_total", "Returns in the cloud"),
    _c("points_kept", "Returns within the range limit"),
    _c("points_far", "Returns dropped beyond the range limit"),
    _c("range_min_m", "Nearest kept return, m"), _c("range_mean_m", "Mean kept range, m"),
    _c("range_max_m", "Farthest kept return, m"),
    _c("payload_ref", "Where the point cloud lies in the raw copy (shapes of people nearby)",
       CONFIDENTIAL),
)
_CAMERA = (
    _c("bytes", "Encoded image size, bytes"), _c("width", "Image width, px"),
    _c("height", "Image height, px"),
    _c("brightness", "Mean brightness 0..255 of the 8x8 block levels; null unless the "
                     "cleaned layer ran with ROBOLAKE_CAMERA_BRIGHTNESS on"),
    _c("is_black", "All-black frame: no 8x8 block brighter than 16 (never matched)"),
    _c("payload_ref", "Where the camera image lies in the raw copy (images of people: "
                      "personal data)", RESTRICTED),
)

IMU_KEY, GPS_KEY, LIDAR_KEY = "cleaned/imu", "cleaned/gps", "cleaned/lidar"
CAMERA_KEY, ALIGNED_KEY = "cleaned/camera_frames", "cleaned/aligned_frames"


def _aligned_columns() -> tuple[Column, ...]:
    imu = tuple(_c(f"imu_{k}", f"Mean {d[0].lower()}{d[1:]} of the non-outlier IMU samples "
                               "within ±50 ms", INTERNAL, f"{IMU_KEY}.{k}", f"{IMU_KEY}.ts_ns")
                for k, d in ((c.name, c.description) for c in _IMU[:6]))
    gps = tuple(_c(f"gps_{k}", f"{d.split(' (')[0]} interpolated between bracketing fixes",
                   RESTRICTED, f"{GPS_KEY}.{k}", f"{GPS_KEY}.ts_ns")
                for k, d in ((c.name, c.description) for c in _GPS[:3]))
    return (
        *_derived(LIDAR_KEY, _SENSOR_ROW[:5]),
        _c("lidar_topic", "LiDAR topic the frame came from", INTERNAL, f"{LIDAR_KEY}.topic"),
        _c("ts_ns", "LiDAR frame time, ns since the Unix epoch", INTERNAL, f"{LIDAR_KEY}.ts_ns"),
        _c("camera_ts_ns", "Nearest camera frame's time (null unless |dt| < 16 ms)", INTERNAL,
           f"{CAMERA_KEY}.ts_ns", f"{LIDAR_KEY}.ts_ns", f"{CAMERA_KEY}.is_black"),
        _c("camera_dt_ms", "Camera frame time minus LiDAR frame time, ms", INTERNAL,
           f"{CAMERA_KEY}.ts_ns", f"{LIDAR_KEY}.ts_ns"),
        *imu,
        _c("imu_count", "IMU samples averaged", INTERNAL, f"{IMU_KEY}.ts_ns", f"{LIDAR_KEY}.ts_ns"),
        *gps,
        _c("lidar_points", "Points kept after range filtering", INTERNAL,
           f"{LIDAR_KEY}.points_kept"),
    )


_UPLOADS = (
    _c("upload_id", "sha256 of the recording's bytes"),
    _c("landing_key", "Path of the file in the landing zone (may name its uploader)",
       CONFIDENTIAL),
    _c("file_name", "Uploaded file name (may name its uploader)", CONFIDENTIAL),
    _c("format", "mcap, bag or ulog"),
    *_IDENTITY,
    _c("identity_source", "Where the robot identity came from: mcap, sidecar or upload"),
    _c("date", "UTC day of the recording's start; partition column"),
    _c("start_ns", "First message time, ns"), _c("end_ns", "Last message time, ns"),
    _c("duration_s", "Recording length, s"), _c("message_count", "Messages in the recording"),
    _c("topics", "Per topic: message type, sensor kind, count, largest gap"),
    _c("size_bytes", "File size, bytes"),
    _c("arrived_ns", "Arrival in the landing zone, ns"), _c("ingested_ns", "Indexing time, ns"),
    _c("quality_score", "0..100; > 90 accepted, 60-90 flagged, < 60 quarantined"),
    _c("status", "accepted, flagged, quarantined or duplicate"),
    _c("reasons", "Why the score or status (names file and field)", CONFIDENTIAL),
    _c("raw_key", "Where the raw (or quarantined) copy lies in the lake"),
    _c("messages_digest", "sha256 of topics, counts and time ranges (re-export detection)"),
)
_LANDING_INDEX = (
    _c("landing_key", "Path of the file in the landing zone", CONFIDENTIAL),
    _c("version", "Size and modification time seen when probed"),
    _c("format", "mcap, bag or ulog"), _c("date", "Assigned UTC day"),
    _c("robot_type", "Assigned robot type"), _c("probed_ns", "When it was probed, ns"),
    _c("upload_id", "Set once its bytes are indexed in raw/uploads"),
)


def _report_columns() -> tuple[Column, ...]:
    from robolake.cleaned import COUNT_COLUMNS

    counts = tuple(_c(n, f"Rule count: {n.replace('_', ' ')}") for n in COUNT_COLUMNS)
    return (
        _c("upload_id", "Upload the report is about"), *_IDENTITY,
        _c("date", "UTC day; partition column"), *counts,
        _c("aligned_frames", "Rows written to cleaned/aligned_frames"),
        _c("clock_offset_ns", "Median sensor-vs-log clock offset, ns"),
        _c("clock_corrected", "Whether a constant clock offset was corrected"),
        _c("null_rate", "Share of missing aligned values"),
        _c("outlier_rate", "Share of IMU outliers"),
        _c("duplicate_rate", "Share of duplicate messages"),
        _c("max_gap_s", "Largest time gap of the primary topics, s"),
        _c("latency_s", "Landing arrival to cleaned rows, s"),
        _c("cleaned_ns", "When the upload was first cleaned, ns"),
        _c("notes", "Remarks (clock correction, skipped sensors)"),
    )


def _corner_case_columns() -> tuple[Column, ...]:
    from robolake.datasets.scenarios import SCENARIOS

    base = tuple(Column(c.name, c.description, c.classification, (f"{ALIGNED_KEY}.{c.name}",))
                 for c in _aligned_columns())
    sources = {"hard_braking": ("imu_ax",), "sharp_turn": ("imu_gz",), "gps_loss": ("gps_lat",),
               "sensor_fault": ("camera_ts_ns", "imu_count"), "rare_robot_type": ("robot_type",)}
    scores = tuple(_c(f"score_{s}", f"0..1 score of the {s.replace('_', ' ')} scenario",
                      INTERNAL, *(f"{ALIGNED_KEY}.{c}" for c in sources[s])) for s in SCENARIOS)
    names = tuple(f"{CORNER_CASES_KEY}.score_{s}" for s in SCENARIOS)
    return (*base, *scores,
            _c("corner_case_score", "Highest scenario score", INTERNAL, *names),
            _c("scenario", "Scenario with the highest score, or nominal", INTERNAL, *names),
            _c("source_version", "cleaned/aligned_frames Delta version the scores are from"))


CORNER_CASES_KEY = "features/corner_cases"
_REGISTRY = (
    _c("name", "Dataset name (spec)", PUBLIC), _c("version", "Dataset version", PUBLIC),
    _c("spec_hash", "sha256 of the spec"), _c("input_fingerprint", "Hash of inputs read"),
    _c("created_ns", "Build time, ns"), _c("inputs", "Delta versions of every table read"),
    _c("manifest_key", "Where the manifest lies"),
    _c("samples_train", "Train samples"), _c("samples_val", "Validation samples"),
    _c("samples_test", "Test samples"), _c("recordings", "Recordings used"),
    _c("missing_rate", "Share of missing feature values"),
    _c("statistics", "Per split: groups, scenarios, label statistics"),
)
_FAILED_RUNS = (
    _c("run_id", "Dagster run id"), _c("job_name", "Job that failed"),
    _c("status", "Run status"), _c("failed_ns", "When it failed, ns"),
    _c("reason", "Failure message, secrets redacted", CONFIDENTIAL),
    _c("failed_steps", "Failed steps and their errors", CONFIDENTIAL),
    _c("partition_key", "Partition of the run"), _c("queue", "Run queue"),
    _c("trigger", "Sensor, schedule or backfill that launched it"),
    _c("tags", "Run tags", CONFIDENTIAL), _c("recorded_ns", "When it was recorded, ns"),
)
_AUDIT = (
    _c("seq", "Position in the hash chain (0, 1, 2, …)"),
    _c("entry_id", "Unique id of the entry"), _c("ts_ns", "When, ns since the Unix epoch"),
    _c("date", "UTC day of ts_ns; partition column"),
    _c("actor", "Who: API key id, Dagster run id or OS user", CONFIDENTIAL),
    _c("role", "Role of the key (robot, engineer, admin, auditor) or run/cli"),
    _c("action", "read, write, erase, purge, promote or approve (a held run)"),
    _c("target", "Table key, API path or model name"),
    _c("version", "Delta table or model version written"),
    _c("partition", "Partition written or read"),
    _c("files", "Files added or removed", CONFIDENTIAL),
    _c("origin", "From where: client address or host and process", CONFIDENTIAL),
    _c("outcome", "HTTP status, or ok"),
    _c("details", "Free-form JSON (reason of an erase, counts)", CONFIDENTIAL),
    _c("prev_hash", "hash of the entry before (tamper evidence)"),
    _c("hash", "sha256 of this entry's fields and prev_hash"),
)

_WITHDRAWN = (
    _c("name", "Dataset name", PUBLIC), _c("version", "Dataset version", PUBLIC),
    _c("reason", "Why it was withdrawn (the erase request's reason)", CONFIDENTIAL),
    _c("erasure_id", "The erase that withdrew it (ops/erasures)"),
    _c("withdrawn_ns", "When, ns"),
)
_ERASURES = (
    _c("erasure_id", "Unique id of the erase"),
    _c("subject_sha256", "sha256 of the erased robot id (never kept in clear)"),
    _c("date_from", "First day erased (null: from the start)"),
    _c("date_to", "Last day erased (null: to the end)"),
    _c("reason", "Why (the request's legal basis)", CONFIDENTIAL),
    _c("requested_by", "Who asked (key, run or user)", CONFIDENTIAL),
    _c("erased_ns", "When, ns"),
    _c("receipt", "JSON: every table version, file and dataset/model touched"),
)

_QUEUE_KEY, _ANNOTATIONS_KEY = "annotations/queue", "cleaned/annotations"
_TASK = (
    _c("task_id", "Label Studio task: hash of (upload_id, ts_ns)"),
    _c("upload_id", "Upload the frame is from"),
    _c("robot_id", "Robot that recorded the frame", CONFIDENTIAL),
    _c("robot_type", "Robot type"), _c("date", "UTC day of the upload"),
    _c("ts_ns", "The LiDAR frame's time, ns", INTERNAL, f"{CORNER_CASES_KEY}.ts_ns"),
)
_QUEUE = (*_TASK,
          _c("corner_case_score", "Score when queued", INTERNAL,
             f"{CORNER_CASES_KEY}.corner_case_score"),
          _c("scenario", "Scenario the rules gave", INTERNAL, f"{CORNER_CASES_KEY}.scenario"),
          _c("batch", "Queue run that sent it (annotations/tasks/<batch>.json)"),
          _c("queued_ns", "When it was queued, ns"))
_ANNOTATION = (*_TASK,
               _c("label", "Scenario class a person chose"),
               _c("note", "The annotator's note", CONFIDENTIAL),
               _c("annotator", "Label Studio user (e-mail or id)", CONFIDENTIAL),
               _c("annotation_id", "Label Studio annotation id"),
               _c("annotated_ns", "When it was annotated, ns"),
               _c("imported_ns", "When it was imported, ns"))

TABLES: dict[str, Table] = {t.key: t for t in (
    Table("raw/uploads", "raw", OWNERS["ingest"], "Index of every upload: identity, time "
          "range, topics, quality score, status and reasons", _UPLOADS),
    Table("raw/landing_index", "raw", OWNERS["ingest"], "Landing files already probed and "
          "their assigned partition", _LANDING_INDEX, robot_column=None),
    Table(IMU_KEY, "cleaned", OWNERS["perception"], "IMU samples, duplicates and outliers "
          "removed", (*_SENSOR_ROW, *_IMU)),
    Table(GPS_KEY, "cleaned", OWNERS["perception"], "GPS fixes, duplicates and invalid fixes "
          "removed", (*_SENSOR_ROW, *_GPS)),
    Table(LIDAR_KEY, "cleaned", OWNERS["perception"], "LiDAR frames: kept points, range "
          "statistics, payload reference", (*_SENSOR_ROW, *_LIDAR)),
    Table(CAMERA_KEY, "cleaned", OWNERS["perception"], "Camera frame index: size, "
          "black flag, brightness (when asked), payload reference", (*_SENSOR_ROW, *_CAMERA)),
    Table(ALIGNED_KEY, "cleaned", OWNERS["perception"], "One row per LiDAR frame with camera, "
          "IMU and GPS aligned to it", _aligned_columns()),
    Table("cleaned/quality_reports", "cleaned", OWNERS["perception"], "Per-upload quality "
          "metrics and cleaning rule counts", _report_columns()),
    Table(CORNER_CASES_KEY, "features", OWNERS["ml"], "Corner-case scores per aligned frame",
          _corner_case_columns()),
    Table(_QUEUE_KEY, "features", OWNERS["ml"], "Corner-case frames sent to Label Studio, "
          "one row per task", _QUEUE),
    Table(_ANNOTATIONS_KEY, "cleaned", OWNERS["ml"], "Labels people gave in Label Studio, "
          "one row per task", _ANNOTATION),
    Table("datasets/registry", "datasets", OWNERS["ml"], "Every built dataset version",
          _REGISTRY, robot_column=None),
    Table("datasets/withdrawn", "datasets", OWNERS["governance"], "Dataset versions "
          "withdrawn by an erase, with the reason", _WITHDRAWN, robot_column=None),
    Table("ops/erasures", "ops", OWNERS["governance"], "Receipts of GDPR erasures",
          _ERASURES, robot_column=None),
    Table("ops/failed_runs", "ops", OWNERS["ingest"], "Failed Dagster runs and why",
          _FAILED_RUNS, robot_column=None),
    Table("ops/audit", "ops", OWNERS["governance"], "Append-only, hash-chained audit log: "
          "who read, wrote, erased or promoted what, when and from where", _AUDIT,
          robot_column=None),
)}

FILE_AREAS: dict[str, FileArea] = {a.prefix: a for a in (
    FileArea("raw/files", "raw", OWNERS["ingest"], "Content-addressed copies of accepted "
             "recordings (camera images, GPS traces)", RESTRICTED),
    FileArea("raw/quarantine", "raw", OWNERS["ingest"], "Copies of quarantined recordings",
             RESTRICTED),
    FileArea("features/cache", "features", OWNERS["ml"], "Transformed features per recording "
             "(GPS trajectories, image crops)", RESTRICTED),
    FileArea("datasets", "datasets", OWNERS["ml"], "WebDataset shards and manifests per "
             "dataset version", RESTRICTED),
    FileArea("annotations/media", "features", OWNERS["ml"], "Camera frames and LiDAR views "
             "of queued corner cases, per upload", RESTRICTED),
    FileArea("annotations/tasks", "features", OWNERS["ml"], "Label Studio import files of the "
             "queue (robot, time and scenario of each task)", CONFIDENTIAL),
    FileArea("notebooks", "features", OWNERS["ml"], "Executed notebooks, their HTML and "
             "figures (plots may show GPS tracks)", RESTRICTED),
)}


def table(key: str) -> Table:
    try:
        return TABLES[key]
    except KeyError:
        raise KeyError(f"{key!r} is not in the catalog (robolake/governance/catalog.py); "
                       f"known tables: {', '.join(sorted(TABLES))}") from None


def classification_of(key: str, column: str | None = None) -> str:
    t = table(key)
    return t.column(column).classification if column else t.classification


# ------------------------------------------------------------------ dataset features
# What each feature and label of a dataset spec is computed from (the builder's reads).

_IMU_AXES = ("ax", "ay", "az", "gx", "gy", "gz")
FEATURE_SOURCES: dict[str, tuple[str, ...]] = {
    "imu_window": (*(f"{IMU_KEY}.{k}" for k in _IMU_AXES), f"{IMU_KEY}.ts_ns"),
    "gps_trajectory": tuple(f"{ALIGNED_KEY}.gps_{k}" for k in ("lat", "lon", "alt")),
    "lidar": (f"{LIDAR_KEY}.payload_ref",),
    "camera": (f"{CAMERA_KEY}.payload_ref",),
    "label_ego_motion": (f"{ALIGNED_KEY}.gps_lat", f"{ALIGNED_KEY}.gps_lon",
                         f"{ALIGNED_KEY}.ts_ns", f"{ALIGNED_KEY}.imu_gz"),
    "label_scenario": (f"{CORNER_CASES_KEY}.scenario",),
}


# the fields of a dataset sample (shard members) and the spec section each comes from
SAMPLE_FIELDS = {"imu": "imu_window", "gps": "gps_trajectory", "lidar": "lidar",
                 "camera": "camera"}


def sample_field_sources(features: list[str]) -> dict[str, tuple[str, ...]]:
    """Each field of a dataset's samples -> the table columns it is computed from
    (`features` as from robolake.governance.search.spec_features)."""
    out = {field: FEATURE_SOURCES[f] for field, f in SAMPLE_FIELDS.items() if f in features}
    labels = [f for f in features if f.startswith("label_")]
    if labels:
        out["label"] = FEATURE_SOURCES.get(labels[0], ())
    return out


def source_level(ref: str) -> str:
    """Classification of a "table_key.column" reference."""
    key, _, column = ref.rpartition(".")
    return classification_of(key, column)


def dataset_classification(features: list[str]) -> str:
    """A dataset version's level: the most sensitive column its features are read from
    (camera images and GPS make it `restricted`)."""
    return most_sensitive(source_level(r) for f in features for r in FEATURE_SOURCES.get(f, ()))
