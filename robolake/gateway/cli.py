"""The gateway's subcommands of `robolake` (registered by robolake_assets/cli.py)."""

from __future__ import annotations

import argparse
import sys


def add_gateway_parsers(sub, debug, gateway_fn, keys_fn, writer_fn) -> None:
    gw = sub.add_parser("gateway", parents=[debug],
                        help="serve the ingestion gateway (and, by default, an embedded broker)")
    gw.add_argument("--host", default="127.0.0.1")
    gw.add_argument("--port", type=int, default=8080)
    gw.set_defaults(func=gateway_fn)

    keys = sub.add_parser("keys", parents=[debug], help="create, list or revoke API keys")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    create = keys_sub.add_parser("create", parents=[debug],
                                 help="create a key and print it, alone, once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--role", required=True,
                        help="robot, engineer, admin or auditor")
    create.add_argument("--robot", help="robot_id (robot keys; uploads carry it)")
    create.add_argument("--robot-type", help="robot_type of the robot (robot keys)")
    create.add_argument("--region", help="region of the robot (robot keys)")
    revoke = keys_sub.add_parser("revoke", parents=[debug], help="revoke a key by its id")
    revoke.add_argument("key_id")
    keys_sub.add_parser("list", parents=[debug], help="keys without their secrets")
    keys.set_defaults(func=keys_fn)

    sw = sub.add_parser("stream-writer", parents=[debug],
                        help="consume streamed readings and write MCAP files into the landing "
                             "zone")
    sw.add_argument("--broker", help="NATS URL (default $ROBOLAKE_BROKER_URL)")
    sw.add_argument("--regions", default="",
                    help="comma-separated regions to consume (default: every robotics.raw "
                         "stream)")
    sw.set_defaults(func=writer_fn)


def keys_command(args: argparse.Namespace) -> int:
    from robolake.gateway.config import state_dir
    from robolake.gateway.db import open_database
    from robolake.gateway.keys import KeyStore

    store = KeyStore(open_database(state_dir()))
    if args.action == "create":
        key, record = store.create(args.tenant, args.role, args.robot, args.robot_type,
                                   args.region)
        print(f"created key {record.key_id} ({record.role}, tenant {record.tenant}); it is "
              "shown once, below on stdout", file=sys.stderr)
        print(key)
    elif args.action == "revoke":
        if not store.revoke(args.key_id):
            raise KeyError(f"no active key {args.key_id!r}")
        print(f"revoked {args.key_id}", file=sys.stderr)
    else:
        for r in store.list():
            print(f"{r.key_id}  {r.tenant:<12} {r.role:<9} {r.robot_id or '-':<16} "
                  f"{'revoked' if r.revoked else 'active'}")
    return 0


def stream_writer_command(args: argparse.Namespace) -> int:
    from robolake.gateway.stream_writer import run_stream_writer

    return run_stream_writer(args)
