"""Dataset specs that read personal data: the `privacy` rule, GPS masking and approvals.

A spec whose features or labels read a `restricted` column (catalog.FEATURE_SOURCES: GPS
positions for `gps_trajectory` and `ego_motion` labels, camera images for `camera`) must
declare one of:

- `privacy: masked`: every GPS fix (gps_lat, gps_lon, gps_alt of the aligned frames) is
  snapped to the centre of its cell on a GRID_M = 100 m grid *before* any feature or label
  is computed, cached or written to shards: latitude in steps of 100 / 111 320 degrees
  (0.000898°), longitude in steps of 100 m at the cell's latitude (100 / (111 320 · cos
  lat) degrees, 0.001476° at 52.5° N), altitude in steps of 100 m. A fix moves at most
  half a cell diagonal, ~71 m horizontally and 50 m vertically, and every fix in one
  cell becomes the same position. Camera images are NOT blurred: Robolake has no face or
  licence-plate detector, so `masked` is refused for a spec with `features.camera`.
  Masking is coarse on purpose: a 1 s GPS history or a speed from consecutive fixes is
  mostly 0 with 100 m jumps; fine motion needs `approved`.
- `privacy: approved` with `approval: {by, when, reason}`: the data is used as recorded.
  The approval is declared in the spec (so it is reviewed with the spec's change) and each
  build records it in ops/audit as an `approve` entry (who approved, when, why, which
  columns, the spec hash) in the same commit as the build's `read` entries. Robolake does
  not check who `by` is: the audit entry names who ran the build with it.

`spec_problems` is the one place the rule is decided (robolake.datasets.spec.parse_spec
calls it); `mask_frames` is the one place GPS is coarsened (robolake.datasets.build).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from robolake.governance import audit, catalog

if TYPE_CHECKING:
    from robolake.datasets.spec import DatasetSpec

GRID_M = 100.0
M_PER_DEG_LAT = 111_320.0  # metres per degree of latitude (WGS84 mean, ±0.5 %)
MASK_VERSION = f"gps_grid_{GRID_M:g}m_v1"  # part of the feature cache key of masked specs
GPS_COLUMNS = ("gps_lat", "gps_lon", "gps_alt")
MASKABLE = frozenset(f"{catalog.ALIGNED_KEY}.{c}" for c in GPS_COLUMNS)
UNMASKABLE_WHY = {
    f"{catalog.CAMERA_KEY}.payload_ref": "camera images are not blurred (Robolake has no face "
                                         "or licence-plate detector)",
}
MODES = ("masked", "approved")


def spec_feature_names(spec: DatasetSpec) -> list[str]:
    """The spec's features and label as named in catalog.FEATURE_SOURCES."""
    feats = [k for k, v in spec.features if v is not None]
    return feats + [f"label_{spec.labels.kind}"]


def restricted_columns(spec: DatasetSpec) -> list[str]:
    """The `restricted` "table.column"s the spec's features and labels are computed from."""
    refs = {r for f in spec_feature_names(spec) for r in catalog.FEATURE_SOURCES.get(f, ())}
    return sorted(r for r in refs if catalog.source_level(r) == catalog.RESTRICTED)


def spec_problems(spec: DatasetSpec) -> list[str]:
    """What is wrong with the spec's `privacy` and `approval` fields ([] when nothing),
    one line each, naming the field and the columns."""
    columns = restricted_columns(spec)
    named = ", ".join(columns)
    if spec.privacy is None:
        if not columns:
            return [] if spec.approval is None else [
                "approval: only for privacy: approved"]
        return [f"privacy: required: the spec reads restricted (personal) columns {named}; "
                f"declare privacy: masked (GPS coarsened to a {GRID_M:g} m grid; camera "
                "images are not blurred) or privacy: approved with approval: "
                "{by, when, reason}"]
    problems = []
    if spec.privacy == "masked":
        for ref in columns:
            if ref not in MASKABLE:
                problems.append(f"privacy: masked cannot cover {ref}: "
                                f"{UNMASKABLE_WHY.get(ref, 'no masking exists for it')}; "
                                "drop that feature or use privacy: approved")
        if spec.approval is not None:
            problems.append("approval: only for privacy: approved (masked needs none)")
    elif spec.approval is None:
        problems.append(f"approval: required with privacy: approved (who approved reading "
                        f"{named or 'restricted columns'}, when and why): "
                        "approval: {by, when, reason}")
    return problems


def coarsen_expressions() -> list[pl.Expr]:
    """gps_lat, gps_lon, gps_alt snapped to the centre of their GRID_M cell (nulls stay)."""
    dlat = GRID_M / M_PER_DEG_LAT
    lat = ((pl.col("gps_lat") / dlat).floor() + 0.5) * dlat
    dlon = GRID_M / (M_PER_DEG_LAT * lat.radians().cos())
    lon = ((pl.col("gps_lon") / dlon).floor() + 0.5) * dlon
    alt = ((pl.col("gps_alt") / GRID_M).floor() + 0.5) * GRID_M
    return [lat.alias("gps_lat"), lon.alias("gps_lon"), alt.alias("gps_alt")]


def mask_frames(spec: DatasetSpec, frames: pl.DataFrame) -> pl.DataFrame:
    """The frames a build computes features from: GPS coarsened when the spec is masked."""
    if spec.privacy != "masked":
        return frames
    return frames.with_columns(coarsen_expressions())


def cache_marker(spec: DatasetSpec) -> dict:
    """What the feature cache key adds for the spec's privacy: masked and unmasked features
    of the same recording never share an entry."""
    return {"privacy": MASK_VERSION} if spec.privacy == "masked" else {}


def manifest_section(spec: DatasetSpec) -> dict:
    """The manifest's `privacy`: mode, the restricted columns and how they were treated."""
    out = {"mode": spec.privacy, "restricted_columns": restricted_columns(spec)}
    if spec.privacy == "masked":
        out["gps_grid_m"] = GRID_M
        out["not_masked"] = "camera images (refused with masked)"
    if spec.approval is not None:
        out["approval"] = spec.approval.model_dump(mode="json")
    return out


def approval_entry(spec: DatasetSpec, actor: audit.Actor | None = None) -> audit.Entry | None:
    """The `approve` audit entry a build of an approved spec records beside its reads
    (robolake.datasets.build.audit_reads); None for other specs."""
    if spec.privacy != "approved" or spec.approval is None:
        return None
    return audit.Entry("approve", f"datasets/{spec.name}/{spec.version}", actor=actor,
                       details={"privacy": "approved", **spec.approval.model_dump(mode="json"),
                                "restricted_columns": restricted_columns(spec),
                                "spec_hash": spec.spec_hash})
