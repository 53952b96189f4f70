"""`robolake catalog …`, `robolake audit …` and `robolake privacy …` (issue 13)."""

from __future__ import annotations

import argparse

from robolake.settings import Settings
from robolake_assets.cli_common import add_lake_option, lake_store


def _cmd_catalog_search(args: argparse.Namespace, settings: Settings) -> int:
    from robolake.governance.search import search

    hits = search(lake_store(args, settings), args.text)
    for h in hits:
        lineage = f"  <- {h.lineage}" if h.lineage else ""
        print(f"{h.kind:<15} {h.name:<48} {h.classification:<12} {h.owner:<20} "
              f"{h.description}{lineage}")
    print(f"{len(hits)} match(es) for {args.text!r}")
    return 0


def _cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from robolake.governance.audit import verify

    verdict = verify(lake_store(args, settings))
    if verdict.ok:
        print(f"audit chain intact: {verdict.entries} entries")
        return 0
    print(f"audit chain BROKEN at entry {verdict.broken_seq} (entry_id "
          f"{verdict.broken_entry or '-'}): {verdict.reason}")
    return 1


def _cmd_privacy_erase(args: argparse.Namespace, settings: Settings) -> int:
    from robolake.governance.erase import erase_robot
    from robolake.storage import open_store

    receipt = erase_robot(lake_store(args, settings), args.robot_id, args.reason, args.date_from,
                          args.date_to, landing=open_store(args.landing or settings.landing),
                          purge_now=args.purge_now)
    print(receipt.to_json())
    return 0


def _cmd_storage_report(args: argparse.Namespace, settings: Settings) -> int:
    from robolake.governance.retention import storage_report

    report = storage_report(lake_store(args, settings))
    print(f"{'layer':<12} {'tier':<14} {'objects':>9} {'bytes':>14}")
    for (layer, tier), (count, size) in report.items():
        print(f"{layer:<12} {tier:<14} {count:>9} {size:>14}")
    total = sum(size for _, size in report.values())
    print(f"{'total':<12} {'':<14} {sum(c for c, _ in report.values()):>9} {total:>14}")
    return 0


def _cmd_storage_tier(args: argparse.Namespace, settings: Settings) -> int:
    from robolake.governance import tiering
    from robolake.storage import LocalStore

    lake = lake_store(args, settings)
    if not isinstance(lake, LocalStore):
        print(f"{lake.uri}: an S3 lake is tiered by its bucket's lifecycle rules "
              "(robolake.governance.retention.apply_lifecycle), not by moving files")
        return 2
    plan = tiering.plan_tiering(lake)
    for a in plan.actions:
        verb = "move to cold" if a.action == "cold" else f"delete ({a.tier})"
        print(f"{verb:<16} {a.key}  ({a.size} B, {a.age_days:.0f} days old)")
    print(f"{len(plan.actions)} file(s) to tier; left alone: {plan.in_tables} in Delta tables, "
          f"{plan.pinned} pinned by live dataset/model versions")
    if not args.apply:
        print("dry run: nothing changed (use --apply)")
        return 0
    for what, count in tiering.apply_tiering(lake, plan).items():
        print(f"done {what}: {count} file(s) (audited)")
    return 0


def _cmd_storage_restore(args: argparse.Namespace, settings: Settings) -> int:
    from robolake.governance.tiering import restore

    if restore(lake_store(args, settings), args.key):
        print(f"restored {args.key} to the hot tier")
        return 0
    print(f"{args.key}: not in the cold tier")
    return 1


def add_governance_parsers(sub, debug: argparse.ArgumentParser) -> None:
    cat = sub.add_parser("catalog", parents=[debug],
                         help="the catalog: tables, columns, datasets and models with their "
                              "classification")
    cat_sub = cat.add_subparsers(dest="action", required=True)
    found = cat_sub.add_parser("search", parents=[debug],
                               help="find tables, columns, dataset and model versions by name, "
                                    "description or tag")
    found.add_argument("text")
    add_lake_option(found)
    found.set_defaults(func=_cmd_catalog_search)

    aud = sub.add_parser("audit", parents=[debug], help="the hash-chained audit log ops/audit")
    aud_sub = aud.add_subparsers(dest="action", required=True)
    ver = aud_sub.add_parser("verify", parents=[debug],
                             help="check the hash chain; names the first broken entry (exit 1)")
    add_lake_option(ver)
    ver.set_defaults(func=_cmd_audit_verify)

    priv = sub.add_parser("privacy", parents=[debug], help="GDPR: erase a robot's data")
    priv_sub = priv.add_subparsers(dest="action", required=True)
    era = priv_sub.add_parser("erase", parents=[debug],
                              help="delete a robot's rows, copies and caches everywhere; "
                                   "withdraw datasets built on them; print the receipt")
    era.add_argument("--robot-id", required=True)
    era.add_argument("--from", dest="date_from", help="first day (YYYY-MM-DD, UTC)")
    era.add_argument("--to", dest="date_to",
                     help="last day (YYYY-MM-DD, UTC): rows with ts_ns before the next "
                          "midnight; a recording crossing the window keeps its raw copy "
                          "(receipt: partial_uploads)")
    era.add_argument("--reason", required=True, help="legal basis, kept with the receipt")
    era.add_argument("--purge-now", action="store_true",
                     help="vacuum the touched tables at once (admins; no old version keeps "
                          "the rows)")
    add_lake_option(era)
    era.add_argument("--landing", help="landing zone (default $ROBOLAKE_LANDING)")
    era.set_defaults(func=_cmd_privacy_erase)

    sto = sub.add_parser("storage", parents=[debug], help="what the lake holds, per tier")
    sto_sub = sto.add_subparsers(dest="action", required=True)
    rep = sto_sub.add_parser("report", parents=[debug], help="objects and bytes per layer and "
                                                           "storage tier")
    _storage_args(rep)
    rep.set_defaults(func=_cmd_storage_report)
    tier = sto_sub.add_parser("tier", parents=[debug],
                              help="a local lake: move files past their layer's tier age to "
                                   "<lake>/.cold, delete expired ones (configs/retention.yaml); "
                                   "a dry run unless --apply")
    _storage_args(tier)
    tier.add_argument("--apply", action="store_true", help="move and delete (audited)")
    tier.set_defaults(func=_cmd_storage_tier)
    res = sto_sub.add_parser("restore", parents=[debug],
                             help="move one cold file back where readers find it")
    res.add_argument("key", help="path relative to the lake root, e.g. raw/files/…")
    _storage_args(res)
    res.set_defaults(func=_cmd_storage_restore)


def _storage_args(parser: argparse.ArgumentParser) -> None:
    add_lake_option(parser)
