"""`robolake backup …`: back up, restore and verify the instance database and the lake.

The instance database comes from the DAGSTER_PG_* variables of
deploy/dagster-postgres.yaml, or `--db-url postgresql://user:pw@host:port/db`;
backups live in the lake (`--lake`, default $ROBOLAKE_LAKE) under
ops/backups/instance/. `verify` exits 1 when a backup is incomplete, corrupt,
not restorable or too old, so a cron job or an alert can run it as it is.
The lake: `restore-table` (a version or a time), `restore-lake` (the versions
pinned with a backup), `undelete-files` (a vacuum's deletions, from S3 versions)
and `protect-bucket` (versioning + replication rules).
"""

from __future__ import annotations

import argparse
import json

from robolake.settings import Settings
from robolake_assets.cli_common import add_lake_option, lake_store


def _target(args: argparse.Namespace):
    from robolake.backup import PgTarget

    return PgTarget.from_url(args.db_url) if args.db_url else PgTarget.from_env()


def _cmd_instance(args: argparse.Namespace, settings: Settings) -> int:
    from robolake import backup, lake_backup

    lake = lake_store(args, settings)
    record = backup.backup_instance(lake, _target(args), stamp=args.stamp)
    pinned = lake_backup.pin_table_versions(lake, record.stamp)
    dropped = backup.apply_retention(lake, args.keep_last, args.keep_daily)
    state = "written" if record.created else "already there, nothing written"
    print(f"backup {record.stamp}: {lake.uri}/{record.key} {record.size_bytes} bytes, "
          f"{sum(record.tables.values())} rows in {len(record.tables)} tables ({state}); "
          f"{len(pinned)} Delta table versions pinned")
    for stamp in dropped:
        print(f"retention: deleted {stamp}")
    return 0


def _cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from robolake import backup

    for entry in backup.list_backups(lake_store(args, settings)):
        print(f"{entry.stamp}\t{'complete' if entry.complete else 'INCOMPLETE'}\t"
              f"{entry.size_bytes}")
    return 0


def _cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from robolake import backup

    target = _target(args).with_db(args.to_db)
    result = backup.restore_instance(lake_store(args, settings), target, args.stamp, jobs=args.jobs)
    print(f"restored {result.stamp} into database {result.database} on {target.host}:"
          f"{target.port} in {result.seconds:.1f} s ({sum(result.tables.values())} rows, "
          "counts match the manifest); point DAGSTER_PG_DB at it and restart the daemon "
          "and webserver")
    return 0


def _cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from robolake import backup

    scratch = None if args.no_restore else _target(args)
    verdicts = backup.verify_latest(lake_store(args, settings), args.count, scratch,
                                    args.max_age_hours)
    if args.json:
        print(json.dumps([v.as_dict() for v in verdicts], indent=1))
    for v in verdicts if not args.json else []:
        how = "" if v.restore_seconds is None else f" (restored in {v.restore_seconds:.1f} s)"
        print(f"{v.stamp}\t{'OK' if v.ok else 'FAILED'}{how}")
        for problem in v.problems:
            print(f"  {problem}")
    return 0 if all(v.ok for v in verdicts) else 1


def _cmd_restore_table(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import datetime

    from robolake import lake_backup

    when = datetime.fromisoformat(args.time) if args.time else None
    if when is not None and when.tzinfo is None:
        raise ValueError(f"--time {args.time}: give a time zone, e.g. {args.time}+00:00")
    r = lake_backup.restore_table(lake_store(args, settings), args.table, args.version, when)
    if r.new_version is None:
        print(f"{r.table}: already holds version {r.to_version}'s data; nothing committed")
    else:
        print(f"{r.table}: restored version {r.to_version} as version {r.new_version} "
              f"(was {r.from_version}; {r.files_restored} files back, {r.files_removed} out)")
    return 0


def _cmd_restore_lake(args: argparse.Namespace, settings: Settings) -> int:
    from robolake import lake_backup

    for r in lake_backup.restore_pinned(lake_store(args, settings), args.stamp):
        state = "unchanged" if r.new_version is None else f"now version {r.new_version}"
        print(f"{r.table}: version {r.to_version} ({state})")
    return 0


def _cmd_undelete(args: argparse.Namespace, settings: Settings) -> int:
    from robolake import lake_backup

    files = lake_backup.undelete_table_files(lake_store(args, settings), args.table, args.version)
    print(f"{args.table}: {len(files)} data file(s) of version {args.version} brought back")
    return 0


def _cmd_protect(args: argparse.Namespace, _settings: Settings) -> int:
    import boto3

    from robolake import lake_backup

    if args.dry_run:
        print(json.dumps({"replication": lake_backup.replication_configuration(
            args.prefix, args.replica_bucket, args.role_arn),
            "lifecycle": lake_backup.lifecycle_configuration(args.prefix)}, indent=1))
        return 0
    state = lake_backup.apply_protection(
        boto3.client("s3"), args.bucket, args.prefix, args.replica_bucket, args.role_arn,
        boto3.client("s3", region_name=args.replica_region))
    print(json.dumps(state, indent=1))
    return 0 if state["ok"] else 1


def _add_lake_parsers(acts, debug: argparse.ArgumentParser,
                      common: argparse.ArgumentParser) -> None:
    tab = acts.add_parser("restore-table", parents=[debug, common],
                          help="restore a Delta table to a version or a time (a new commit)")
    tab.add_argument("table", help="table key in the lake, e.g. cleaned/imu")
    which = tab.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int)
    which.add_argument("--time", help="ISO time with zone, e.g. 2026-12-03T10:00:00+00:00")
    tab.set_defaults(func=_cmd_restore_table)
    pin = acts.add_parser("restore-lake", parents=[debug, common],
                          help="every table back to the versions pinned by a backup")
    pin.add_argument("--stamp", required=True, help="the backup's stamp (backup list)")
    pin.set_defaults(func=_cmd_restore_lake)
    und = acts.add_parser("undelete-files", parents=[debug, common],
                          help="bring back a version's vacuumed files from S3 versions")
    und.add_argument("table")
    und.add_argument("--version", type=int, required=True)
    und.set_defaults(func=_cmd_undelete)
    pro = acts.add_parser("protect-bucket", parents=[debug],
                          help="S3 versioning, lifecycle and cross-region replication rules")
    pro.add_argument("--bucket", required=True)
    pro.add_argument("--prefix", default="lake")
    pro.add_argument("--replica-bucket", required=True)
    pro.add_argument("--replica-region", required=True)
    pro.add_argument("--role-arn", required=True, help="IAM role S3 replicates with")
    pro.add_argument("--dry-run", action="store_true", help="print the rules, apply nothing")
    pro.set_defaults(func=_cmd_protect)


def add_backup_parsers(sub, debug: argparse.ArgumentParser) -> None:
    """The `backup` command group (called once from robolake_assets.cli.build_parser)."""
    from robolake import backup

    top = sub.add_parser("backup", parents=[debug],
                         help="back up, restore and verify the instance database")
    acts = top.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    add_lake_option(common)
    common.add_argument("--db-url", help="postgresql://user:pw@host:port/db "
                                         "(default: the DAGSTER_PG_* variables)")
    inst = acts.add_parser("instance", parents=[debug, common],
                           help="pg_dump the instance database now, then apply the retention")
    inst.add_argument("--stamp", help="backup key YYYYmmddTHHMMSSZ (default: now, UTC)")
    inst.add_argument("--keep-last", type=int, default=backup.DEFAULT_KEEP_LAST)
    inst.add_argument("--keep-daily", type=int, default=backup.DEFAULT_KEEP_DAILY)
    inst.set_defaults(func=_cmd_instance)
    lst = acts.add_parser("list", parents=[debug, common], help="backups, oldest first")
    lst.set_defaults(func=_cmd_list)
    res = acts.add_parser("restore", parents=[debug, common],
                          help="restore a backup into a NEW database on the --db-url server")
    res.add_argument("--to-db", required=True, help="name of the database to create")
    res.add_argument("--stamp", help="which backup (default: the newest complete one)")
    res.add_argument("--jobs", type=int, default=2, help="pg_restore parallel jobs")
    res.set_defaults(func=_cmd_restore)
    ver = acts.add_parser("verify", parents=[debug, common],
                          help="check the newest backups are complete and restorable")
    ver.add_argument("--count", type=int, default=1, help="how many of the newest to check")
    ver.add_argument("--no-restore", action="store_true",
                     help="check manifests and checksums only, restore nothing")
    ver.add_argument("--max-age-hours", type=float, default=2.0,
                     help="fail when the newest complete backup is older (default 2)")
    ver.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    ver.set_defaults(func=_cmd_verify)
    _add_lake_parsers(acts, debug, common)
