"""The `neuraldiffeq` command: `neuraldiffeq demo NAME ...` (and more subcommands as they land)."""

from __future__ import annotations

import argparse
import importlib
import sys

from .demos import DEMOS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuraldiffeq", description="Neural differential equations: demos and fitting."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a built-in demo")
    demos = demo.add_subparsers(dest="demo", required=True, metavar="NAME")
    for name, module_name in DEMOS.items():
        module = importlib.import_module(module_name)
        sub = demos.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(sub)
        _add_common(sub)
        sub.set_defaults(handler=module.run)
    from .commands import fit_csv

    fit_cmd = commands.add_parser(
        "fit", help="fit a neural ODE to a CSV file", description=fit_csv.__doc__
    )
    fit_csv.add_arguments(fit_cmd)
    _add_common(fit_cmd)
    fit_cmd.set_defaults(handler=fit_csv.run)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide progress bars"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except ValueError as e:
        print(f"neuraldiffeq: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
