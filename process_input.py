"""Encode images into label maps (DeepLabV3+) and captions (BLIP).

    python process_input.py --input_dir data/original_images --output_dir data/segmented_images

For every image under --input_dir (recursively, subfolders mirrored) this writes, at the same
relative path, a .sem file (label map + caption + optional seed in our compact format, see
docs/bitstream.md; --grid G codes the map on a G-cell grid) and, for training, a label map as a
palette PNG with a .png extension plus one prompts.json that maps each image's path relative to
--input_dir to its caption (--format chooses: both, sem or png). Finished images (every
requested output present) are skipped on a re-run unless --overwrite is given. Bad files are reported one line each; the others are still
encoded, and the exit status is 1 if anything failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.config import ConfigError, DEFAULT_CONFIG_PATH, load_config
from models.encode_job import (OUTPUT_FORMATS, PARTIAL_PATTERN, OutputSpec, merge_captions,
                               plan_encode, report, run_encode)
from models.imageio import check_output_not_inside_input
from models.runtime import add_device_arguments, is_global_zero, resolve_devices
from models.segmentation import CheckpointError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--input_dir", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--output_dir", required=True, help="where label maps and prompts.json go")
    parser.add_argument("--config_path", default=str(DEFAULT_CONFIG_PATH), help="YAML config")
    parser.add_argument("--segmentation_ckpt", default=None,
                        help="DeepLabV3+ checkpoint (overrides segmentation.checkpoint)")
    parser.add_argument("--batch_size", type=int, default=None, help="overrides encode.batch_size")
    parser.add_argument("--num_workers", type=int, default=None, help="overrides encode.num_workers")
    parser.add_argument("--max_pixels", type=int, default=None,
                        help="refuse larger images (overrides encode.max_pixels)")
    parser.add_argument("--allow_pickle", action="store_true",
                        help="load a legacy segmentation checkpoint that needs pickle (trusted files only)")
    parser.add_argument("--overwrite", action="store_true", help="re-encode images already done")
    parser.add_argument("--format", default="both", choices=OUTPUT_FORMATS,
                        help="outputs: .sem files, palette PNGs + prompts.json, or both")
    parser.add_argument("--grid", type=int, default=None,
                        help=".sem compact mode: map on a grid of G cells on the long side "
                             "(default: lossless)")
    parser.add_argument("--seed", type=int, default=None, help="decoding seed stored in .sem files")
    parser.add_argument("--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="set any config value, e.g. --override segmentation.output_stride=8")
    add_device_arguments(parser, gpu_flag="--gpus")
    return parser.parse_args(argv)


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides implied by the dedicated flags, then the generic ones."""
    overrides = []
    if args.segmentation_ckpt is not None:
        overrides.append(f"segmentation.checkpoint={Path(args.segmentation_ckpt).resolve()}")
    for flag, key in (("batch_size", "encode.batch_size"), ("num_workers", "encode.num_workers"),
                      ("max_pixels", "encode.max_pixels")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.allow_pickle:
        overrides.append("segmentation.allow_pickle=true")
    return overrides + args.override


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    input_dir, output_dir = Path(args.input_dir), Path(args.output_dir)
    try:
        if not input_dir.is_dir():
            raise ValueError(f"--input_dir {input_dir} is not a folder")
        check_output_not_inside_input(input_dir, output_dir)
        config = load_config(args.config_path, config_overrides(args))
        spec = resolve_devices(args)
        outputs = OutputSpec(format=args.format, grid=args.grid, seed=args.seed)
    except (ValueError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    plan = plan_encode(input_dir, output_dir, overwrite=args.overwrite, outputs=outputs)
    if not plan.todo:
        if not is_global_zero():
            return 0
        if any(output_dir.glob(PARTIAL_PATTERN)):  # captions left by an interrupted run
            merge_captions(output_dir)
        return report(plan, None, output_dir)
    try:
        result = run_encode(plan, config, spec, output_dir, outputs=outputs)
    except (CheckpointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return report(plan, result, output_dir) if result.is_global_zero else 0


if __name__ == "__main__":
    sys.exit(main())
