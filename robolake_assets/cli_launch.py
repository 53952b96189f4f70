"""`robolake launch JOB`: queue a job of the running code location and say what happened;
`robolake notify-email TENANT ADDRESS`: where a tenant's notifications are emailed.

`dagster job launch` prints nothing on success; this goes through the webserver's GraphQL
API (the platform API's client, robolake/gateway/platform.py) and prints the run id, its
state and its page in the UI; `--wait` follows it to the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

DEFAULT_UI = "http://127.0.0.1:3000"
DONE = ("SUCCESS", "FAILURE", "CANCELED")


def launch_tags(partition: str | None, reclean: bool = False) -> dict[str, str]:
    """The tags of a run queued by `robolake launch`."""
    from robolake.cleaned import RECLEAN_TAG

    return {"robolake/trigger": "cli-launch", **partition_tags(partition),
            **({RECLEAN_TAG: "true"} if reclean else {})}


def partition_tags(key: str | None) -> dict[str, str]:
    """The run tags of a (date, robot type) partition key "2026-11-27|delivery" (or of a
    single-dimension key, e.g. a dataset version)."""
    if not key:
        return {}
    if "|" not in key:
        return {"dagster/partition": key}
    day, robot_type = key.split("|", 1)
    return {"dagster/partition": key, "dagster/partition/date": day,
            "dagster/partition/robot_type": robot_type}


async def _launch(args: argparse.Namespace) -> int:
    from robolake.gateway.platform import DagsterGraphQL, PlatformError

    client = DagsterGraphQL(url=f"{args.url.rstrip('/')}/graphql")
    try:
        run = await client.launch(args.job, launch_tags(args.partition, args.reclean))
    except PlatformError as exc:
        raise ValueError(f"{exc.reason} (is `make ui` running at {args.url}?)") from None
    page = f"{args.url.rstrip('/')}/runs/{run['runId']}"
    print(f"run {run['runId']} {run['status']}: {args.job}"
          f"{' ' + args.partition if args.partition else ''}  {page}")
    status = run["status"]
    while args.wait and status not in DONE:
        await asyncio.sleep(2)
        new = (await client.run(run["runId"]))["status"]
        if new != status:
            print(f"{time.strftime('%H:%M:%S')} {new}")
        status = new
    return 1 if status in ("FAILURE", "CANCELED") else 0


def _cmd_launch(args: argparse.Namespace, _settings=None) -> int:
    return asyncio.run(_launch(args))


def add_launch_parser(sub, debug: argparse.ArgumentParser) -> None:
    launch = sub.add_parser(
        "launch", parents=[debug], help="queue a job in the running Dagster (make ui) and "
                                        "print its run id and state",
        description="Queue a job of the code location through the Dagster webserver (as "
                    "`dagster job launch` does) and print the run's id, state and page; "
                    "the daemon of `make ui` runs it.")
    launch.add_argument("job", help="e.g. ingest_through_raw, build_datasets, train_imu_gps_demo")
    launch.add_argument("--partition", help="e.g. 2026-11-27|delivery (date|robot type) or a "
                                            "dataset version for a train_ job")
    launch.add_argument("--url", default=os.environ.get("ROBOLAKE_DAGSTER_UI", DEFAULT_UI),
                        help=f"the Dagster webserver (default $ROBOLAKE_DAGSTER_UI or "
                             f"{DEFAULT_UI})")
    launch.add_argument("--wait", action="store_true", help="follow the run until it ends")
    launch.add_argument("--reclean", action="store_true",
                        help="clean every upload of the partition again (after a change of the "
                             "cleaning rules), not only those no run cleaned yet")
    launch.set_defaults(func=_cmd_launch)


def _cmd_notify_email(args: argparse.Namespace, _settings=None) -> int:
    from robolake.gateway.config import state_dir
    from robolake.gateway.db import open_database
    from robolake.notify import Notifier

    Notifier(open_database(state_dir())).set_email(args.tenant, args.address)
    print(f"{args.tenant}: notifications are emailed to {args.address} "
          "(with ROBOLAKE_SMTP_HOST set where the gateway and Dagster run)")
    return 0


def add_notify_parser(sub, debug: argparse.ArgumentParser) -> None:
    email = sub.add_parser("notify-email", parents=[debug],
                           help="email a tenant's notifications (verdicts, failed runs and "
                                "checks, freshness breaches) to an address")
    email.add_argument("tenant", help="the tenant (as in `robolake keys create --tenant`)")
    email.add_argument("address", help="e.g. data-team@example.com")
    email.set_defaults(func=_cmd_notify_email)
