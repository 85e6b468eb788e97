"""The ``diffquant`` command line: argument parsing and pretty output only.

Each sub-command lives in ``diffquant/commands/<name>.py`` and exposes
``add_parser(subparsers)``; the parser it adds sets ``func(args) -> int``. Modules are imported
lazily so that ``diffquant --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from diffquant import __version__
from diffquant.errors import DiffquantError

# Order here is the order in --help.
COMMAND_MODULES = (
    "recipes", "generate", "quantize", "bench", "results", "matrix",
    "score", "report", "grid", "export", "card", "plan", "recommend", "sensitivity",
    "arena",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffquant",
        description="Which quantization recipe should I run for my diffusion model, and what do I lose?",
    )
    parser.add_argument("--version", action="version", version=f"diffquant {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"diffquant.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"diffquant.commands.{name}":
                continue  # command not built yet
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from diffquant.quiet import quiet_import_noise

    quiet_import_noise()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DiffquantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
