"""Compress images with classic codecs at a target file size (not implemented yet)."""

from __future__ import annotations

import argparse
import sys

from models.stub import not_implemented


def parse_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input-dir", default=None, help="images to compress")
    parser.add_argument("--output-dir", default=None, help="where compressed files go")
    parser.add_argument("--target-size", type=float, default=None, help="target size in KB")
    return parser


def main(argv: list[str] | None = None) -> int:
    return not_implemented(parse_args_parser(), argv, "the baselines-and-evaluation issue")


if __name__ == "__main__":
    sys.exit(main())
