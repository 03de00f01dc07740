"""The ``mechattr`` command: ``mechattr --help``, ``mechattr version``, ``mechattr demo``, ...

Subcommands register in :data:`COMMANDS` as ``(add_arguments, run)`` pairs.
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
    p.add_argument("--out", default="reports/demo", help="directory for the report")
    p.add_argument("--seed", type=int, default=0)


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


def build_parser() -> argparse.ArgumentParser:
    _load_plugins()
    parser = argparse.ArgumentParser(
        prog="mechattr",
        description="Mechanistic attribution for TransformerLens models: attribute, intervene, validate, report.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        fn = COMMANDS.get(name)
        p = sub.add_parser(name, help=fn.help, description=fn.help)
        add = getattr(fn, "add_arguments", None)
        if add is not None:
            add(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        return int(COMMANDS.get(args.command)(args) or 0)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"mechattr {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # run the imported module's main: plugins (mechattr.report.cli) register there, not in __main__
    from mechattr.cli import main as _main

    sys.exit(_main())
