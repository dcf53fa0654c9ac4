"""Compare reconstructions with the original images (not implemented yet)."""

from __future__ import annotations

import argparse
import sys

from models.stub import not_implemented


def parse_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prediction_path", default=None, help="reconstructed images")
    parser.add_argument("--ground_truth_path", default=None, help="original images")
    return parser


def main(argv: list[str] | None = None) -> int:
    return not_implemented(parse_args_parser(), argv, "the baselines-and-evaluation issue")


if __name__ == "__main__":
    sys.exit(main())
