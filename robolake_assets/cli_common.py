"""What the `robolake` subcommand modules share: the `--lake` option and the store it names."""

from __future__ import annotations

import argparse

from robolake.settings import Settings

LAKE_HELP = "lake root (default $ROBOLAKE_LAKE or ./lake)"


def add_lake_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lake", help=LAKE_HELP)


def lake_store(args: argparse.Namespace, settings: Settings):
    """The lake `--lake` names, else the settings' lake."""
    from robolake.storage import open_store

    return open_store(args.lake or settings.lake)
