"""Command-line scripts whose capability has not landed yet: they show --help and refuse to run."""

from __future__ import annotations

import argparse
import sys


def not_implemented(parser: argparse.ArgumentParser, argv: list[str] | None, issue: str) -> int:
    """Parse (so --help works), then say clearly that nothing was done."""
    parser.parse_args(argv)
    print(f"error: {parser.prog} is not implemented yet (tracked in {issue}); nothing was done",
          file=sys.stderr)
    return 3
