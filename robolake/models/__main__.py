"""`python -m robolake.models CONFIG [--lake L]`: train, evaluate and maybe promote a model."""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robolake.models", description=__doc__)
    parser.add_argument("config", help="training config YAML (configs/training/*.yaml)")
    parser.add_argument("--lake", help="lake root (default: $ROBOLAKE_LAKE or ./lake)")
    parser.add_argument("--retrain", action="store_true",
                        help="train even when this config is already trained and registered")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = parser.parse_args(argv)

    from robolake.models.pipeline import train_and_evaluate

    result = train_and_evaluate(args.lake, args.config, retrain=args.retrain)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
