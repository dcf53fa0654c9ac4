"""Train the ControlNet decoder on label maps and captions (not implemented yet)."""

from __future__ import annotations

import argparse
import sys

from models.stub import not_implemented


def parse_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config_path", default="configs/config.yaml", help="YAML config")
    parser.add_argument("--sd_model_path", default=None, help="Stable Diffusion 1.5 weights")
    parser.add_argument("--gpus", type=int, nargs="+", default=None, help="GPU indices")
    parser.add_argument("--batch_size_per_gpu", type=int, default=None, help="batch size per GPU")
    return parser


def main(argv: list[str] | None = None) -> int:
    return not_implemented(parse_args_parser(), argv, "the decoder-training issue")


if __name__ == "__main__":
    sys.exit(main())
