"""`robolake annotations queue|import`: the annotation queue from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from robolake.settings import Settings
from robolake_assets.cli_common import add_lake_option, lake_store


def _cmd_annotations(args: argparse.Namespace, settings: Settings) -> int:
    from robolake import annotations, contract

    lake = lake_store(args, settings)
    if args.action == "queue":
        threshold = contract.CORNER_CASE_THRESHOLD if args.threshold is None else args.threshold
        result = annotations.queue_corner_cases(lake, threshold, args.limit, args.url_prefix,
                                                log=print)
        print(f"queued {len(result.tasks)} task(s) ({result.already_queued} queued before)"
              + (f"; import {lake.table_uri(result.tasks_key)} into Label Studio with the "
                 f"config {lake.table_uri('annotations/label_config.xml')}"
                 if result.tasks_key else ""))
        return 0
    result = annotations.import_annotations(lake, Path(args.export))
    for reason in result.refused:
        print(f"refused {reason}")
    print(f"imported {len(result.imported)} label(s) into {annotations.ANNOTATIONS}"
          + (f" (Delta version {result.version})" if result.version is not None else "")
          + (f"; refused {len(result.refused)}" if result.refused else ""))
    return 1 if result.refused and not result.imported else 0


def add_annotation_parsers(sub, debug: argparse.ArgumentParser) -> None:
    ann = sub.add_parser("annotations", parents=[debug],
                         help="queue corner-case frames for Label Studio, import its labels",
                         description="Corner-case frames out to Label Studio as tasks (camera "
                                     "frame, LiDAR bird's-eye view, context), and Label "
                                     "Studio's JSON export back into cleaned/annotations.")
    ann_sub = ann.add_subparsers(dest="action", required=True)
    queue = ann_sub.add_parser("queue", parents=[debug],
                               help="queue frames not queued yet; writes a Label Studio import")
    queue.add_argument("--threshold", type=float,
                       help="lowest corner-case score queued (default: the contract's "
                            "corner-case threshold)")
    queue.add_argument("--limit", type=int, help="at most this many tasks, highest scores first")
    queue.add_argument("--url-prefix", default="/data/local-files/?d=",
                       help="prefix of media URLs before their lake key (default: Label "
                            "Studio's local-files route)")
    imp = ann_sub.add_parser("import", parents=[debug],
                             help="a Label Studio JSON export into cleaned/annotations")
    imp.add_argument("export", help="the project's JSON export file")
    for p in (queue, imp):
        add_lake_option(p)
    ann.set_defaults(func=_cmd_annotations)
