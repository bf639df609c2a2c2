"""Benchmarks of dualwrite, one subcommand per area, each printing one JSON object with --json.

    uv run python loadtests/bench.py crypto --json
    uv run python loadtests/bench.py --help

Each subcommand lives in its own module next to this file (``bench_<name>.py``) exposing
``add_arguments(parser)`` and ``run(args) -> dict`` (and optionally ``format_human(result) ->
str``). Only the chosen subcommand's module is imported; a module that does not exist yet is
reported clearly instead of breaking the others. To add one, write the module and add a line to
``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# subcommand -> (module next to this file, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "crypto": ("bench_crypto", "FieldCipher encrypt/decrypt vs bare AESGCM per 20-byte field"),
    "backfill": ("bench_backfill", "online backfill throughput (rows/s)"),
    "api": ("bench_api", "API latency with encrypted reads"),
    "all": ("bench_all", "every issue-12 figure in one run: reads, codec, backfill, memory"),
    "rewrite": (
        "bench_rewrite",
        "rewrite lock time per method (VACUUM FULL, pg_repack), scan rate",
    ),
    "chaos": ("bench_chaos", "randomized fault soak of the whole data path (tests/chaos)"),
}


def _load(name: str) -> ModuleType | None:
    module_name = SUBCOMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return None


def _chosen(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, ModuleType | None]:
    """The parser; only the subcommand named in ``argv`` gets its module imported."""
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__.splitlines()[0])
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _chosen(argv)
    module = None
    for name, (_module_name, help_text) in SUBCOMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        if name == chosen:
            module = _load(name)
            if module is not None:
                module.add_arguments(sub)
    return parser, module


def _human(result: dict[str, Any], module: ModuleType) -> str:
    formatter = getattr(module, "format_human", None)
    if formatter is not None:
        return str(formatter(result))
    width = max(map(len, result), default=0)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in result.items())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    if module is None:
        module_name = SUBCOMMANDS[args.command][0]
        print(
            f"bench.py: '{args.command}' is not available yet "
            f"({HERE / (module_name + '.py')} does not exist)",
            file=sys.stderr,
        )
        return 2
    result = module.run(args)
    print(json.dumps(result, sort_keys=True) if args.json else _human(result, module))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
