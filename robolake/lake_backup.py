"""Backups of the lake itself: S3 versioning and cross-region replication, object
point-in-time recovery, and Delta tables restored to a version, a time or a pinned snapshot.

Three layers, each covering what the one before cannot:

- **Delta time travel** (`restore_table`): every commit is a version; a table goes
  back to a version or to the state at a time with deltalake's own RESTORE (a new
  commit, so the restore itself can be undone). Works while the older version's
  files exist, i.e. within the vacuum retention (`maintenance.MIN_RETENTION_HOURS`).
- **Pinned snapshots** (`pin_table_versions`): the hourly backup job writes the version
  of every table at the backup's stamp to `ops/backups/delta/<stamp>.json`, so the
  whole lake goes back to the same point as the instance database backup of that stamp
  (`restore_pinned`).
- **S3 versioning + replication** (`protection_rules`, `apply_protection`): the lake
  bucket keeps every overwritten or deleted object as a noncurrent version for
  `NONCURRENT_DAYS` (vacuumed files included, so a table can go back further than the
  vacuum retention), and replicates every write to a bucket in another region within
  15 minutes (S3 Replication Time Control). `restore_object` brings back one object as
  it was at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from robolake.governance.audit import AUDIT
from robolake.maintenance import MIN_RETENTION_HOURS, discover_tables
from robolake.storage import S3Store, Store
from robolake.tables import open_table

PIN_PREFIX = "ops/backups/delta"
NONCURRENT_DAYS = 30  # overwritten/deleted objects stay recoverable this long
REPLICATION_MINUTES = 15  # S3 RTC: 99.99 % of objects replicated within 15 minutes
ABORT_MULTIPART_DAYS = 7


# --------------------------------------------------------------------------- S3 rules


def _arn(bucket: str) -> str:
    return bucket if bucket.startswith("arn:") else f"arn:aws:s3:::{bucket}"


def replication_configuration(prefix: str, replica_bucket: str, role_arn: str,
                              minutes: int = REPLICATION_MINUTES) -> dict:
    """One rule: every object under `prefix` to the replica bucket (another region), with
    delete markers (the replica keeps the deleted version as noncurrent, like the source)
    and Replication Time Control, so the lake's recovery point is `minutes` behind."""
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    return {"Role": role_arn, "Rules": [{
        "ID": f"robolake-{prefix.strip('/') or 'bucket'}-to-standby",
        "Priority": 1,
        "Status": "Enabled",
        "Filter": {"Prefix": prefix},
        "DeleteMarkerReplication": {"Status": "Enabled"},
        "Destination": {
            "Bucket": _arn(replica_bucket),
            "StorageClass": "STANDARD",  # a warm standby reads it at once
            "ReplicationTime": {"Status": "Enabled", "Time": {"Minutes": minutes}},
            "Metrics": {"Status": "Enabled", "EventThreshold": {"Minutes": minutes}}},
    }]}


def lifecycle_configuration(prefix: str, noncurrent_days: int = NONCURRENT_DAYS) -> dict:
    """Noncurrent versions expire after `noncurrent_days`; stale multipart uploads and
    delete markers with nothing behind them are cleaned up."""
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    return {"Rules": [
        {"ID": "robolake-noncurrent-versions", "Status": "Enabled", "Filter": {"Prefix": prefix},
         "NoncurrentVersionExpiration": {"NoncurrentDays": noncurrent_days},
         "Expiration": {"ExpiredObjectDeleteMarker": True}},
        {"ID": "robolake-abort-multipart", "Status": "Enabled", "Filter": {"Prefix": prefix},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_MULTIPART_DAYS}},
    ]}


def apply_protection(client, bucket: str, prefix: str, replica_bucket: str, role_arn: str,
                     replica_client=None) -> dict:
    """Versioning on both buckets (replication requires it), the replication rule on the
    source, the lifecycle on both. Every call sets the same state (idempotent); returns
    `check_protection`'s reading afterwards."""
    replica_client = replica_client or client
    for c, b in ((client, bucket), (replica_client, replica_bucket)):
        c.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
        c.put_bucket_lifecycle_configuration(Bucket=b,
                                             LifecycleConfiguration=lifecycle_configuration(prefix))
    client.put_bucket_replication(
        Bucket=bucket,
        ReplicationConfiguration=replication_configuration(prefix, replica_bucket, role_arn))
    return check_protection(client, bucket, prefix, replica_bucket, replica_client)


def check_protection(client, bucket: str, prefix: str, replica_bucket: str,
                     replica_client=None) -> dict:
    """What the buckets say: {'ok': bool, 'problems': [...]} (each naming bucket and field)."""
    from botocore.exceptions import ClientError

    replica_client = replica_client or client
    problems = []
    for c, b in ((client, bucket), (replica_client, replica_bucket)):
        status = c.get_bucket_versioning(Bucket=b).get("Status", "Disabled")
        if status != "Enabled":
            problems.append(f"s3://{b}: Versioning.Status is {status}, expected Enabled")
    try:
        rules = client.get_bucket_replication(Bucket=bucket)["ReplicationConfiguration"]["Rules"]
    except ClientError:
        rules = []
    want = prefix.strip("/") + "/" if prefix.strip("/") else ""
    covering = [r for r in rules if r.get("Status") == "Enabled"
                and want.startswith(r.get("Filter", {}).get("Prefix", r.get("Prefix", "")))
                and r["Destination"]["Bucket"] == _arn(replica_bucket)]
    if not covering:
        problems.append(f"s3://{bucket}: no enabled ReplicationConfiguration rule copies "
                        f"'{want}' to {_arn(replica_bucket)}")
    return {"ok": not problems, "problems": problems, "rules": [r["ID"] for r in covering]}


def restore_object(client, bucket: str, key: str, when: datetime) -> str | None:
    """Make the version of `key` current at `when` current again (a copy of it becomes the
    newest version; nothing is deleted). Returns the version id copied, None when it is
    already current. Raises FileNotFoundError when the key did not exist at `when`."""
    versions = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket,
                                                                      Prefix=key):
        versions += [(v["LastModified"], v["VersionId"], v.get("IsLatest", False), True)
                     for v in page.get("Versions", []) if v["Key"] == key]
        versions += [(m["LastModified"], m["VersionId"], m.get("IsLatest", False), False)
                     for m in page.get("DeleteMarkers", []) if m["Key"] == key]
    # S3 times are whole seconds: on a tie the newest (IsLatest) entry counts as later
    before = sorted((v for v in versions if v[0] <= when), key=lambda v: (v[0], v[2]))
    if not before or not before[-1][3]:
        raise FileNotFoundError(f"s3://{bucket}/{key} did not exist at {when.isoformat()}")
    _at, version_id, is_latest, _ = before[-1]
    if is_latest:
        return None
    client.copy_object(Bucket=bucket, Key=key,
                       CopySource={"Bucket": bucket, "Key": key, "VersionId": version_id})
    return version_id


def undelete_table_files(lake: S3Store, key: str, version: int) -> list[str]:
    """Bring back, from their noncurrent S3 versions, the data files of table `key` at
    `version` that a vacuum deleted (data files are immutable: any version of the object
    is the file). Returns the restored keys; after it, `restore_table` can go back to
    `version` even past the vacuum retention."""
    if not isinstance(lake, S3Store):
        raise ValueError(f"{lake.uri}: undeleting files needs a versioned S3 lake")
    restored = []
    for uri in sorted(DeltaTable(lake.table_uri(key), version=version,
                                 storage_options=lake.delta_options or None).file_uris()):
        rel = uri.removeprefix(f"{lake.uri}/")
        if lake.exists(rel):
            continue
        full = lake._key(rel)
        listing = lake.client.list_object_versions(Bucket=lake.bucket, Prefix=full)
        kept = [v for v in listing.get("Versions", []) if v["Key"] == full]
        if not kept:
            raise FileNotFoundError(f"s3://{lake.bucket}/{full}: no version left (expired "
                                    f"after {NONCURRENT_DAYS} days?)")
        newest = max(kept, key=lambda v: v["LastModified"])
        lake.client.copy_object(Bucket=lake.bucket, Key=full, CopySource={
            "Bucket": lake.bucket, "Key": full, "VersionId": newest["VersionId"]})
        restored.append(rel)
    return restored


# --------------------------------------------------------------------------- Delta restore


@dataclass(frozen=True)
class TableRestore:
    table: str
    from_version: int
    to_version: int  # the version whose state is current again
    new_version: int | None  # the RESTORE commit; None: already in that state
    files_restored: int = 0
    files_removed: int = 0


def version_at(table: DeltaTable, when: datetime) -> int:
    """The newest version committed at or before `when`."""
    cutoff_ms = int(when.timestamp() * 1000)
    versions = [h["version"] for h in table.history() if h["timestamp"] <= cutoff_ms]
    if not versions:
        raise ValueError(f"{table.table_uri}: no version committed at or before "
                         f"{when.isoformat()}")
    return max(versions)


def _files(lake: Store, key: str, version: int) -> set[str]:
    return set(DeltaTable(lake.table_uri(key), version=version,
                          storage_options=lake.delta_options or None).file_uris())


def restore_table(lake: Store, key: str, version: int | None = None,
                  when: datetime | None = None) -> TableRestore:
    """Make table `key` hold what it held at `version` (or at time `when`) with a RESTORE
    commit. Idempotent: a table already in that state gets no commit."""
    if (version is None) == (when is None):
        raise ValueError("give exactly one of version or when")
    table = open_table(lake, key)
    if table is None:
        raise FileNotFoundError(f"{lake.uri}/{key}: not a Delta table")
    current = table.version()
    target = version_at(table, when) if when is not None else int(version)
    if not 0 <= target <= current:
        raise ValueError(f"{key}: version {target} does not exist (table is at {current})")
    wanted, present = _files(lake, key, target), set(table.file_uris())
    if wanted == present:
        return TableRestore(key, current, target, None)
    gone = [u for u in sorted(wanted - present) if not lake.exists(u.removeprefix(
        f"{lake.uri}/"))]
    if gone:
        raise RuntimeError(
            f"{key}: cannot restore version {target}: {len(gone)} of its data files are gone "
            f"(e.g. {gone[0]}): a vacuum deletes files older than its retention "
            f"({MIN_RETENTION_HOURS} h by default); on a versioned S3 lake bring them back "
            f"first with `robolake backup undelete-files {key} --version {target}`")
    try:
        metrics = table.restore(target)
    except (DeltaError, OSError) as exc:
        raise RuntimeError(f"{key}: cannot restore version {target}: {exc}") from exc
    return TableRestore(key, current, target, table.version(),
                        int(metrics.get("numRestoredFile", 0)),
                        int(metrics.get("numRemovedFile", 0)))


# --------------------------------------------------------------------------- pinned snapshots


def pin_key(stamp: str) -> str:
    return f"{PIN_PREFIX}/{stamp}.json"


# the audit log is append-only and hash-chained: a restore never rolls it back (a restore is
# itself an event it records)
NEVER_RESTORED = frozenset({AUDIT})


def pin_table_versions(lake: Store, stamp: str) -> dict[str, int]:
    """Record the current version of every Delta table (but the audit log) under
    `ops/backups/delta/<stamp>.json` (once per stamp: a second call returns the first pin)."""
    key = pin_key(stamp)
    if lake.exists(key):
        return json.loads(lake.read_bytes(key))["tables"]
    tables = {}
    for table_key in discover_tables(lake):
        if table_key in NEVER_RESTORED:
            continue
        table = open_table(lake, table_key)
        if table is not None:
            tables[table_key] = table.version()
    lake.write_bytes(key, json.dumps({"stamp": stamp, "pinned_at": datetime.now(UTC).isoformat(),
                                      "tables": tables}, indent=1, sort_keys=True).encode())
    return tables


def restore_pinned(lake: Store, stamp: str) -> list[TableRestore]:
    """Every table pinned at `stamp` back to its pinned version (tables created after the
    pin are left alone and reported by the caller if it wants)."""
    key = pin_key(stamp)
    if not lake.exists(key):
        raise FileNotFoundError(f"{lake.uri}/{key}: no pinned versions for {stamp}")
    tables = json.loads(lake.read_bytes(key))["tables"]
    return [restore_table(lake, table, version=v) for table, v in sorted(tables.items())]
