"""End-to-end mIoU of the shapes system on images of several aspect ratios, for each rule that
sets the generation size (``decode.generation_scale``).

    python bench/aspect.py [--count 32] [--aspects 1 1.3333 1.7778]

The shipped ControlNet (``configs/shapes.yaml``) was trained on 64x64 squares. Held-out images
64 pixels high and 64, 85 or 114 wide (shapes as large as in training) are encoded, decoded and
re-segmented as ``python -m models.quickstart evaluate`` does. Rules: "area" in multiples of 8
pixels (the earlier decoder), "area" in the decoder's multiples (16 here: one latent pixel at the
UNet's coarsest level), and "short_side" (short side = the training resolution).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.config import load_config  # noqa: E402
from models.evaluation.report import format_table  # noqa: E402
from models.quickstart.quality import aspect_ratio_mious  # noqa: E402

RULES = (("area, multiples of 8 (before)", "area", 8), ("area, the decoder's multiples", "area", None),
         ("short side = resolution (now)", "short_side", None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=32, help="held-out images per aspect ratio")
    parser.add_argument("--aspects", type=float, nargs="+", default=[1.0, 4 / 3, 16 / 9], help="width / height")
    parser.add_argument("--decode_seeds", type=int, nargs="+", default=[0, 1],
                        help="decode.seed values (the noise); the table gives their mean and range")
    parser.add_argument("--config_path", default="configs/shapes.yaml")
    args = parser.parse_args(argv)
    rows = []
    for name, rule, multiple in RULES:
        start, runs = time.perf_counter(), []
        for seed in args.decode_seeds:
            config = load_config(args.config_path, [f"decode.generation_scale={rule}", f"decode.seed={seed}"])
            runs.append(list(aspect_ratio_mious(config, tuple(args.aspects), args.count,
                                                size_multiple=multiple).values()))
        cells = [f"{sum(v) / len(v):.3f} ({min(v):.3f}-{max(v):.3f})" for v in zip(*runs)]
        rows.append([name, *cells, round(time.perf_counter() - start)])
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"end-to-end mIoU, {args.count} held-out shapes images per aspect ratio, mean (range) over decode "
          f"seeds {args.decode_seeds}, {torch.get_num_threads()} threads")
    print(format_table(["generation size"] + [f"{a:.3g}:1" for a in args.aspects] + ["seconds"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
