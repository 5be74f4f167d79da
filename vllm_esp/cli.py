"""The ``vllm-esp`` command: helpers around the plugin (not a second server).

Each subcommand lives in its own module and exposes ``add_parser(subparsers)`` returning the
parser, whose ``func`` default runs it. Modules are imported lazily so ``vllm-esp --help`` is
fast and a missing optional dependency only breaks its own subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module that defines add_parser(subparsers)
SUBCOMMANDS = {
    "setup-cli": "vllm_esp.compat",
    "demo": "vllm_esp.demo",
    "profile": "vllm_esp.profiler.cli",
    "simulate": "vllm_esp.simulator.cli",
}


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default in ``--help`` (where it has one worth showing)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-esp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("vllm_esp"):
                continue  # subcommand not built yet
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
