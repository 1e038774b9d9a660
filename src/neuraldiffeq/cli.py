"""The `neuraldiffeq` command: `neuraldiffeq demo NAME ...` and `neuraldiffeq fit DATA.csv ...`.

Exit status: 0 done; 1 an output could not be written or the fit failed (the message says where
the model is); 2 bad input (a one-line message, no traceback); 130 interrupted by Ctrl-C (the best
model so far is saved). Only the standard library is imported before the arguments are parsed:
a demo's module is imported only when that demo is named, so `--help` and `--version` stay quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .demos import DEMOS

EXIT_OUTPUT, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows every default (not `(default: None)`, nor a flag's True/False)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):  # flags: no default
            return action.help
        return super()._get_help_string(action)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command's parser. Given `argv`, only the subcommand named there gets its arguments."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package_version = version("neuraldiffeq")
    except PackageNotFoundError:  # running from a source tree
        package_version = "unknown"
    parser = argparse.ArgumentParser(
        prog="neuraldiffeq",
        description="Neural differential equations: demos and fitting.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="run a built-in demo", formatter_class=_Formatter)
    demos = demo.add_subparsers(dest="demo", required=True, metavar="NAME")
    words = sys.argv[1:] if argv is None else list(argv)
    for name, (module_name, summary) in DEMOS.items():
        sub = demos.add_parser(name, help=summary, description=summary, formatter_class=_Formatter)
        if name in words:  # import a demo (and JAX) only when it is run or asked about
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            _add_common(sub)
            sub.set_defaults(handler=module.run)
    fit_cmd = commands.add_parser(
        "fit",
        help="fit a neural ODE to a CSV file",
        description="Fit a neural ODE to the columns of a CSV file; see `neuraldiffeq fit -h`.",
        formatter_class=_Formatter,
    )
    if "fit" in words:
        from .commands import fit_csv

        fit_cmd.description = fit_csv.__doc__
        fit_csv.add_arguments(fit_cmd)
        _add_common(fit_cmd)
        fit_cmd.set_defaults(handler=fit_csv.run)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide progress bars"
    )
    parser.add_argument(
        "--no-cache",
        dest="cache",
        action="store_false",
        help="do not keep compiled programs on disk (default: kept in $NEURALDIFFEQ_CACHE_DIR "
        "or ~/.cache/neuraldiffeq/jax, so the next run starts faster)",
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (see the module docstring).

    Example:
        >>> from neuraldiffeq.cli import main
        >>> main(["fit", "missing.csv", "--time", "t"])
        2
    """
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    from .fitting.fit import FitFailure
    from .io.outputs import Interrupted, OutputError
    from .solve.errors import SolveError

    try:
        if args.cache:
            from .compilation.persistent import enable_compilation_cache

            enable_compilation_cache()
        args.handler(args)
    except KeyboardInterrupt:  # outside a fit (a fit catches Ctrl-C and returns its best)
        print("neuraldiffeq: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Interrupted as e:
        print(f"neuraldiffeq: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OutputError, FitFailure, SolveError) as e:  # a solve after the fit failed: why
        print(f"neuraldiffeq: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_OUTPUT
    except ValueError as e:
        print(f"neuraldiffeq: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
