"""Backups of the Dagster instance database: `pg_dump` into the lake, retention, restore, verify.

A backup is a folder `ops/backups/instance/<stamp>/` in the lake (a local folder or S3)
holding `dagster.dump` (pg_dump's custom format, compressed, restorable in parallel)
and `manifest.json`, written last: a backup without a manifest is incomplete (a dump
cut short) and is never restored or counted. The manifest records the dump's size
and sha256 and the row count of every table, counted inside the very snapshot
pg_dump exports (`pg_export_snapshot` + `pg_dump --snapshot`), so a restore can be
checked row for row even while the instance keeps writing.

The stamp (UTC, `YYYYmmddTHHMMSSZ`) is the backup's key: taking the backup of a
stamp that already has a manifest does nothing (a retried or duplicated schedule
tick writes nothing twice). Plain functions, no Dagster: the nightly job, the
`robolake backup` CLI and a person at 3 a.m. run the same code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from robolake.storage import Store, delete_key

BACKUP_PREFIX = "ops/backups/instance"
DUMP_NAME = "dagster.dump"
MANIFEST_NAME = "manifest.json"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
STAMP_RE = re.compile(r"^\d{8}T\d{6}Z$")
MANIFEST_FIELDS = ("stamp", "database", "server_version", "pg_dump_version", "size_bytes",
                   "sha256", "tables", "dump_seconds")
# the tables without which a Dagster instance is not an instance
DAGSTER_TABLES = ("public.runs", "public.event_logs", "public.alembic_version")
DEFAULT_KEEP_LAST = 48  # hourly backups: two days of them
DEFAULT_KEEP_DAILY = 30  # then the newest of each day, for 30 days
PG_TIMEOUT_S = 6 * 3600


class BackupError(RuntimeError):
    pass


# --------------------------------------------------------------------------- connection


@dataclass(frozen=True)
class PgTarget:
    """Where a PostgreSQL database is; the password goes to libpq through the environment,
    never onto a command line."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    dbname: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PgTarget:
        """The instance database of deploy/dagster-postgres.yaml (DAGSTER_PG_* variables)."""
        env = os.environ if env is None else env
        missing = [v for v in ("DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_DB")
                   if not env.get(v)]
        if missing:
            raise ValueError(f"no instance database configured: set {', '.join(missing)} "
                             "(or pass --db-url)")
        return cls(env["DAGSTER_PG_HOST"], int(env.get("DAGSTER_PG_PORT") or 5432),
                   env["DAGSTER_PG_USER"], env.get("DAGSTER_PG_PASSWORD", ""),
                   env["DAGSTER_PG_DB"])

    @classmethod
    def from_url(cls, url: str) -> PgTarget:
        """From a SQLAlchemy/libpq URL, e.g. postgresql+psycopg2://user:pw@host:5432/db."""
        parsed = urlparse(url)
        if not parsed.scheme.startswith("postgres") or not parsed.hostname:
            raise ValueError(f"not a PostgreSQL URL: {parsed.scheme}://{parsed.hostname or ''}")
        return cls(parsed.hostname, parsed.port or 5432, unquote(parsed.username or ""),
                   unquote(parsed.password or ""), parsed.path.lstrip("/") or "postgres")

    def with_db(self, dbname: str) -> PgTarget:
        return replace(self, dbname=dbname)

    def libpq_env(self) -> dict[str, str]:
        return {**os.environ, "PGHOST": self.host, "PGPORT": str(self.port),
                "PGUSER": self.user, "PGPASSWORD": self.password, "PGDATABASE": self.dbname,
                "PGCONNECT_TIMEOUT": "10"}

    def connect(self):
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user,
                                password=self.password, dbname=self.dbname, connect_timeout=10)


def pg_tool(name: str) -> str:
    """A PostgreSQL client program: $ROBOLAKE_PG_BIN, else the newest Debian install, else PATH
    (pg_dump must be at least the server's version)."""
    folder = os.environ.get("ROBOLAKE_PG_BIN")
    candidates = [Path(folder) / name] if folder else []
    debian = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                    key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    candidates += reversed(debian)
    for path in candidates:
        if path.exists():
            return str(path)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: install the PostgreSQL client "
                                "(apt-get install postgresql-client) or set ROBOLAKE_PG_BIN")
    return found


def _run(cmd: list[str], target: PgTarget) -> str:
    out = subprocess.run(cmd, env=target.libpq_env(), capture_output=True, text=True,
                         timeout=PG_TIMEOUT_S)
    if out.returncode != 0:
        raise BackupError(f"{Path(cmd[0]).name} failed ({out.returncode}): "
                          f"{out.stderr.strip()[-2000:]}")
    return out.stdout


# --------------------------------------------------------------------------- backup


@dataclass(frozen=True)
class BackupRecord:
    stamp: str
    key: str  # the dump's key in the lake
    size_bytes: int
    sha256: str
    tables: dict[str, int]
    dump_seconds: float
    created: bool  # False: this stamp was already backed up, nothing written


def new_stamp(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).astimezone(UTC).strftime(STAMP_FORMAT)


def backup_keys(stamp: str) -> tuple[str, str]:
    if not STAMP_RE.match(stamp):
        raise ValueError(f"backup stamp {stamp!r}: expected YYYYmmddTHHMMSSZ (UTC)")
    return f"{BACKUP_PREFIX}/{stamp}/{DUMP_NAME}", f"{BACKUP_PREFIX}/{stamp}/{MANIFEST_NAME}"


def _quoted(table: str) -> str:
    schema, name = table.split(".", 1)
    return '"{}"."{}"'.format(schema.replace('"', '""'), name.replace('"', '""'))


@contextmanager
def _exported_snapshot(target: PgTarget) -> Iterator[tuple[str, dict[str, int], str]]:
    """A read-only repeatable-read transaction held open: its snapshot id (for pg_dump), the
    row count of every user table in that snapshot, and the server version."""
    conn = target.connect()
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_export_snapshot(), current_setting('server_version')")
            snapshot, version = cur.fetchone()
            cur.execute("SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname "
                        "NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")
            tables = [row[0] for row in cur.fetchall()]
            counts = {}
            for table in tables:
                cur.execute(f"SELECT count(*) FROM {_quoted(table)}")
                counts[table] = cur.fetchone()[0]
        yield snapshot, counts, version
    finally:
        conn.rollback()
        conn.close()


def dump_tables(path: Path) -> set[str]:
    """`schema.table` of every TABLE DATA entry in a custom-format dump's table of contents;
    pg_restore fails on a truncated or corrupt archive."""
    out = subprocess.run([pg_tool("pg_restore"), "--list", str(path)], capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        raise BackupError(f"pg_restore --list: {out.stderr.strip()[-500:]}")
    tables = set()
    for line in out.stdout.splitlines():
        if line.startswith(";") or " TABLE DATA " not in line:
            continue
        schema, name = line.split(" TABLE DATA ", 1)[1].split()[:2]
        tables.add(f"{schema}.{name}")
    return tables


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def backup_instance(lake: Store, target: PgTarget, stamp: str | None = None) -> BackupRecord:
    """pg_dump the database into `ops/backups/instance/<stamp>/`; the manifest goes last."""
    stamp = stamp or new_stamp()
    dump_key, manifest_key = backup_keys(stamp)
    if lake.exists(manifest_key):
        manifest = json.loads(lake.read_bytes(manifest_key))
        return BackupRecord(stamp, dump_key, manifest["size_bytes"], manifest["sha256"],
                            manifest["tables"], manifest["dump_seconds"], created=False)
    with tempfile.TemporaryDirectory(prefix="robolake-backup-") as tmp:
        path = Path(tmp) / DUMP_NAME
        started = time.perf_counter()
        with _exported_snapshot(target) as (snapshot, counts, server_version):
            _run([pg_tool("pg_dump"), "--format=custom", "--compress=6", "--no-owner",
                  "--no-privileges", f"--snapshot={snapshot}", f"--file={path}"], target)
        seconds = round(time.perf_counter() - started, 3)
        missing = set(counts) - dump_tables(path)
        if missing:
            raise BackupError(f"{dump_key}: tables missing from the dump: {sorted(missing)}")
        manifest = {"stamp": stamp, "database": target.dbname, "server_version": server_version,
                    "pg_dump_version": _run([pg_tool("pg_dump"), "--version"], target).strip(),
                    "size_bytes": path.stat().st_size, "sha256": sha256_file(path),
                    "tables": counts, "dump_seconds": seconds,
                    "created_at": datetime.now(UTC).isoformat()}
        lake.put_file(path, dump_key)
    lake.write_bytes(manifest_key, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return BackupRecord(stamp, dump_key, manifest["size_bytes"], manifest["sha256"], counts,
                        seconds, created=True)


# --------------------------------------------------------------------------- listing, retention


@dataclass(frozen=True)
class BackupEntry:
    stamp: str
    complete: bool  # has its manifest
    size_bytes: int  # of the dump (0 if none)
    keys: tuple[str, ...]


def list_backups(lake: Store) -> list[BackupEntry]:
    """Every backup folder under ops/backups/instance, oldest first."""
    found: dict[str, list] = {}
    for info in lake.list(BACKUP_PREFIX):
        parts = info.key[len(BACKUP_PREFIX) + 1:].split("/")
        if len(parts) == 2 and STAMP_RE.match(parts[0]):
            found.setdefault(parts[0], []).append(info)
    return [BackupEntry(stamp, any(i.key.endswith(MANIFEST_NAME) for i in infos),
                        sum(i.size for i in infos if i.key.endswith(DUMP_NAME)),
                        tuple(sorted(i.key for i in infos)))
            for stamp, infos in sorted(found.items())]


def backups_to_delete(entries: list[BackupEntry], keep_last: int = DEFAULT_KEEP_LAST,
                      keep_daily: int = DEFAULT_KEEP_DAILY) -> list[BackupEntry]:
    """Keep the newest `keep_last` complete backups and the newest complete backup of each
    of the newest `keep_daily` days; drop the other complete ones and every incomplete one
    older than the newest complete backup (a newer one may still be being written)."""
    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last}: at least the newest backup must be kept")
    complete = sorted((e for e in entries if e.complete), key=lambda e: e.stamp, reverse=True)
    keep = {e.stamp for e in complete[:keep_last]}
    days: dict[str, str] = {}
    for e in complete:
        days.setdefault(e.stamp[:8], e.stamp)
    keep |= set(sorted(days.values(), reverse=True)[:keep_daily])
    newest = complete[0].stamp if complete else ""
    return [e for e in entries
            if (e.complete and e.stamp not in keep) or (not e.complete and e.stamp < newest)]


def apply_retention(lake: Store, keep_last: int = DEFAULT_KEEP_LAST,
                    keep_daily: int = DEFAULT_KEEP_DAILY) -> list[str]:
    """Delete the backups the policy drops (manifest first: a half-deleted backup reads as
    incomplete, never as complete); returns their stamps."""
    dropped = backups_to_delete(list_backups(lake), keep_last, keep_daily)
    for entry in dropped:
        for key in sorted(entry.keys, key=lambda k: not k.endswith(MANIFEST_NAME)):
            delete_key(lake, key)
    return [e.stamp for e in dropped]


def latest_complete(lake: Store) -> str:
    complete = [e.stamp for e in list_backups(lake) if e.complete]
    if not complete:
        raise FileNotFoundError(f"no complete backup under {lake.uri}/{BACKUP_PREFIX}")
    return complete[-1]


# --------------------------------------------------------------------------- restore, verify


@dataclass(frozen=True)
class RestoreResult:
    stamp: str
    database: str
    size_bytes: int
    seconds: float
    tables: dict[str, int]  # row counts found in the restored database


def read_manifest(lake: Store, stamp: str) -> dict:
    _dump_key, manifest_key = backup_keys(stamp)
    if not lake.exists(manifest_key):
        raise FileNotFoundError(f"{manifest_key}: no manifest (backup incomplete or absent)")
    try:
        manifest = json.loads(lake.read_bytes(manifest_key))
    except ValueError as exc:
        raise BackupError(f"{manifest_key}: not JSON ({exc})") from exc
    missing = [f for f in MANIFEST_FIELDS if f not in manifest]
    if missing:
        raise BackupError(f"{manifest_key}: fields missing: {', '.join(missing)}")
    return manifest


def check_dump(path: Path, dump_key: str, manifest: dict) -> list[str]:
    """Problems of a downloaded dump against its manifest: size, sha256, tables in the TOC."""
    size = path.stat().st_size
    if size != manifest["size_bytes"]:
        return [f"{dump_key}: size_bytes {size} != manifest {manifest['size_bytes']}"]
    digest = sha256_file(path)
    if digest != manifest["sha256"]:
        return [f"{dump_key}: sha256 {digest[:12]}… != manifest {manifest['sha256'][:12]}…"]
    try:
        listed = dump_tables(path)
    except BackupError as exc:
        return [f"{dump_key}: {exc}"]
    problems = [f"{dump_key}: table {t} in the manifest is not in the dump"
                for t in sorted(set(manifest["tables"]) - listed)]
    problems += [f"{dump_key}: manifest tables lack {t} (not a Dagster instance?)"
                 for t in DAGSTER_TABLES if t not in manifest["tables"]]
    return problems


def create_database(admin: PgTarget, dbname: str) -> None:
    """CREATE DATABASE; refuses an existing one (a restore never writes over a database)."""
    from psycopg2 import sql

    conn = admin.with_db("postgres").connect()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if cur.fetchone():
                raise ValueError(f"database {dbname!r} exists on {admin.host}:{admin.port}; "
                                  "restore into a new database")
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    finally:
        conn.close()


def drop_database(admin: PgTarget, dbname: str) -> None:
    from psycopg2 import sql

    conn = admin.with_db("postgres").connect()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(dbname)))
    finally:
        conn.close()


def count_rows(target: PgTarget, tables: list[str]) -> dict[str, int]:
    conn = target.connect()
    try:
        with conn.cursor() as cur:
            counts = {}
            for table in tables:
                cur.execute(f"SELECT count(*) FROM {_quoted(table)}")
                counts[table] = cur.fetchone()[0]
            return counts
    finally:
        conn.close()


def restore_instance(lake: Store, target: PgTarget, stamp: str | None = None,
                     jobs: int = 2) -> RestoreResult:
    """Restore a backup (default: the newest complete one) into the new database
    `target.dbname`, after checking the dump against its manifest; the restored row
    counts must equal the manifest's."""
    stamp = stamp or latest_complete(lake)
    manifest = read_manifest(lake, stamp)
    dump_key, _ = backup_keys(stamp)
    with lake.local_path(dump_key) as path:
        problems = check_dump(path, dump_key, manifest)
        if problems:
            raise BackupError("; ".join(problems))
        create_database(target, target.dbname)
        started = time.perf_counter()
        _run([pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
              f"--jobs={max(1, jobs)}", f"--dbname={target.dbname}", str(path)], target)
        seconds = round(time.perf_counter() - started, 3)
    counts = count_rows(target, sorted(manifest["tables"]))
    wrong = {t: (counts[t], n) for t, n in manifest["tables"].items() if counts[t] != n}
    if wrong:
        raise BackupError(f"{dump_key}: restored row counts differ from the manifest "
                          f"(restored, manifest): {wrong}")
    return RestoreResult(stamp, target.dbname, manifest["size_bytes"], seconds, counts)


@dataclass(frozen=True)
class Verdict:
    stamp: str
    ok: bool
    problems: list[str]
    restore_seconds: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def verify_backup(lake: Store, stamp: str, scratch: PgTarget | None = None) -> Verdict:
    """Complete (manifest, size, sha256, every table in the dump) and, given a scratch
    server, restorable: restored into a throwaway database whose row counts must match."""
    dump_key, _ = backup_keys(stamp)
    try:
        manifest = read_manifest(lake, stamp)
        if not lake.exists(dump_key):
            return Verdict(stamp, False, [f"{dump_key}: missing (manifest present)"])
        with lake.local_path(dump_key) as path:
            problems = check_dump(path, dump_key, manifest)
    except (FileNotFoundError, BackupError) as exc:
        return Verdict(stamp, False, [str(exc)])
    if problems or scratch is None:
        return Verdict(stamp, not problems, problems)
    db = scratch.with_db(f"robolake_verify_{stamp.lower()}")
    drop_database(scratch, db.dbname)  # a previous verify that died half-way
    try:
        result = restore_instance(lake, db, stamp)
    except BackupError as exc:
        return Verdict(stamp, False, [str(exc)])
    finally:
        drop_database(scratch, db.dbname)
    return Verdict(stamp, True, [], result.seconds)


def verify_latest(lake: Store, count: int = 1, scratch: PgTarget | None = None,
                  max_age_hours: float | None = None, now: datetime | None = None
                  ) -> list[Verdict]:
    """Verdicts on the newest `count` backups (incomplete ones included: a failed backup
    must show); also fails when the newest complete one is older than `max_age_hours`."""
    entries = list_backups(lake)
    if not entries:
        return [Verdict("-", False, [f"{lake.uri}/{BACKUP_PREFIX}: no backups"])]
    verdicts = [verify_backup(lake, e.stamp, scratch) for e in entries[-count:]]
    complete = [e.stamp for e in entries if e.complete]
    if max_age_hours is not None and complete:
        taken = datetime.strptime(complete[-1], STAMP_FORMAT).replace(tzinfo=UTC)
        age_h = ((now or datetime.now(UTC)) - taken).total_seconds() / 3600
        if age_h > max_age_hours:
            verdicts.append(Verdict(complete[-1], False, [
                f"newest complete backup {complete[-1]} is {age_h:.1f} h old "
                f"(max {max_age_hours:g} h: the recovery point objective is breached)"]))
    return verdicts
