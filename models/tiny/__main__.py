"""Write every tiny component in its real on-disk format, and a config.yaml that points at them.

    python -m models.tiny --output_dir /tmp/tiny

What is written: ``models.tiny.components``. Torch is imported after the arguments are parsed.
"""

from __future__ import annotations

import argparse
import sys

from models.config import SEGMENTER_FAMILIES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.tiny", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="folder to write the components into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--segmenter", choices=SEGMENTER_FAMILIES, default="deeplabv3plus",
                        help="the encoder family config.yaml uses: DeepLabV3+ (VOC maps) or the tiny SegFormer "
                             "(ADE20K maps, decoded in ADE20K colours)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from models.tiny.components import build_tiny_components  # torch, diffusers: after --help

    config_path = build_tiny_components(args.output_dir, seed=args.seed, segmenter=args.segmenter)
    print(f"tiny components written; use --config_path {config_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
