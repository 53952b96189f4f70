"""`robolake catalog …`, `robolake audit …` and `robolake privacy …` (issue 13)."""

from __future__ import annotations

import argparse

from robolake.settings import Settings


def _lake(args: argparse.Namespace, settings: Settings):
    from robolake.storage import open_store

    return open_store(args.lake or settings.lake)


def _cmd_catalog_search(args: argparse.Namespace, settings: Settings) -> int:
    from robolake.governance.search import search

    hits = search(_lake(args, settings), args.text)
    for h in hits:
        lineage = f"  <- {h.lineage}" if h.lineage else ""
        print(f"{h.kind:<15} {h.name:<48} {h.classification:<12} {h.owner:<20} "
              f"{h.description}{lineage}")
    print(f"{len(hits)} match(es) for {args.text!r}")
    return 0


def _cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from robolake.governance.audit import verify

    verdict = verify(_lake(args, settings))
    if verdict.ok:
        print(f"audit chain intact: {verdict.entries} entries")
        return 0
    print(f"audit chain BROKEN at entry {verdict.broken_seq} (entry_id "
          f"{verdict.broken_entry or '-'}): {verdict.reason}")
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
    found.add_argument("--lake", help="lake root (default $ROBOLAKE_LAKE or ./lake)")
    found.set_defaults(func=_cmd_catalog_search)

    aud = sub.add_parser("audit", parents=[debug], help="the hash-chained audit log ops/audit")
    aud_sub = aud.add_subparsers(dest="action", required=True)
    ver = aud_sub.add_parser("verify", parents=[debug],
                             help="check the hash chain; names the first broken entry (exit 1)")
    ver.add_argument("--lake", help="lake root (default $ROBOLAKE_LAKE or ./lake)")
    ver.set_defaults(func=_cmd_audit_verify)
