"""Decode label maps and captions into images with the ControlNet (not implemented yet)."""

from __future__ import annotations

import argparse
import sys

from models.stub import not_implemented


def parse_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config_path", default="configs/config.yaml", help="YAML config")
    parser.add_argument("--checkpoint_path", default=None, help="trained ControlNet")
    parser.add_argument("--input_path", default=None, help="label maps to decode")
    parser.add_argument("--output_dir", default=None, help="where decoded images go")
    parser.add_argument("--prompt_json_path", default=None, help="prompts.json with captions")
    parser.add_argument("--gpu_ids", default=None, help='GPU indices, e.g. "0,1"')
    parser.add_argument("--use_fp16", action="store_true", help="half precision")
    return parser


def main(argv: list[str] | None = None) -> int:
    return not_implemented(parse_args_parser(), argv, "the batch-decoding issue")


if __name__ == "__main__":
    sys.exit(main())
