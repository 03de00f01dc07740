"""The ``mechattr`` command: ``mechattr --help``, ``mechattr version``, ``mechattr demo``, ...

Subcommands register in :data:`COMMANDS` as ``(add_arguments, run)`` pairs. Only the chosen
subcommand's options are built (its ``add_arguments`` may import registries, and with them
torch), so ``mechattr --help`` imports neither torch nor TransformerLens. Errors print one
line; ``--debug`` shows the full traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from mechattr.registry import Registry

COMMANDS: Registry = Registry("command")


def command(name: str, help: str) -> Callable:
    """Register ``fn(args) -> int`` as a subcommand; ``fn.add_arguments(parser)`` optional."""

    def deco(fn: Callable) -> Callable:
        fn.help = help  # type: ignore[attr-defined]
        COMMANDS.register(name, fn)
        return fn

    return deco


@command("version", "print mechattr and dependency versions")
def _version(args: argparse.Namespace) -> int:
    from mechattr.io import versions

    for k, v in versions().items():
        print(f"{k} {v}")
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="reports/demo", help="directory for the reports and their index.html")
    p.add_argument("--seed", type=int, default=0, help="seed of the task batches and the wrong claim")


@command("demo", "run the main job on a shipped model organism and write a report")
def _demo(args: argparse.Namespace) -> int:
    from mechattr.demo import run_demo

    return run_demo(out=args.out, seed=args.seed)


_demo.add_arguments = _demo_args  # type: ignore[attr-defined]


def _load_plugins() -> None:
    """Import modules that register further subcommands (absent ones are skipped)."""
    import importlib

    for mod in ("mechattr.report.cli", "mechattr.attribution.cli", "mechattr.sweep.cli"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:
                raise


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that states every option's default (unless its text already does, or it is a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is None or action.default is False or action.default is argparse.SUPPRESS
                or not action.option_strings or "default" in text.lower()):
            return text
        return f"{text} (default: %(default)s)"


def _chosen(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (its first word that is one), if any."""
    return next((a for a in argv if not a.startswith("-") and a in COMMANDS), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``mechattr`` parser. With ``argv``, only the subcommand it names gets its options
    built (``None``: all of them, e.g. for documentation and tests)."""
    _load_plugins()
    parser = argparse.ArgumentParser(
        prog="mechattr",
        description="Mechanistic attribution for TransformerLens models: attribute, intervene, validate, report.",
        epilog="Run 'mechattr COMMAND --help' for a command's options.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="on an error, print the full traceback")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None if argv is None else _chosen(argv)
    for name in COMMANDS:
        fn = COMMANDS.get(name)
        p = sub.add_parser(name, help=fn.help, description=fn.help, formatter_class=HelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="on an error, print the full traceback")
        add = getattr(fn, "add_arguments", None)
        if add is not None and (argv is None or name == chosen):
            add(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mechattr`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    An error prints one line ``mechattr COMMAND: error: ...`` and returns 2 (1 for an
    unexpected exception type); ``--debug`` re-raises it with its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        return int(COMMANDS.get(args.command)(args) or 0)
    except KeyboardInterrupt:
        print(f"mechattr {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line unless --debug
        if args.debug:
            raise
        expected = isinstance(err, (ValueError, FileNotFoundError, TypeError, RuntimeError, KeyError))
        kind = "" if isinstance(err, (ValueError, FileNotFoundError)) else f"{type(err).__name__}: "
        msg = " ".join(str(err).split()) or type(err).__name__  # one line, nothing dropped
        print(f"mechattr {args.command}: error: {kind}{msg}"
              + ("" if expected else " (run with --debug for the traceback)"), file=sys.stderr)
        return 2 if expected else 1


if __name__ == "__main__":
    # run the imported module's main: plugins (mechattr.report.cli) register there, not in __main__
    from mechattr.cli import main as _main

    sys.exit(_main())
