"""Encode images into label maps (DeepLabV3+, or a transformers segmentation model) and captions (BLIP).

    python process_input.py --input_dir data/original_images --output_dir data/segmented_images

The label maps come from DeepLabV3+ (segmentation.family: deeplab, PASCAL VOC classes) or from
any transformers segmentation model (segmentation.family: transformers, e.g. an ADE20K scene
parser); --output_dir gets a label_set.json saying which classes the maps' values are, and a
folder that already holds maps of another label set is refused unless --overwrite is given.

For every image under --input_dir (recursively, subfolders mirrored) this writes, at the same
relative path, a .sem file (label map + caption + optional seed in our compact format, see
docs/bitstream.md; --grid G codes the map on a G-cell grid; --target_bytes N or --target_bpp B
makes each file the finest that fits that budget) and, for training, a label map as a
palette PNG with a .png extension plus one prompts.json that maps each image's path relative to
--input_dir to its caption (--format chooses: both, sem or png). Finished images (every
requested output present) are skipped on a re-run unless --overwrite is given. Bad files are
reported one line each; the others are still encoded, and the exit status is 1 if anything failed.
A file over its budget even at the coarsest grid is kept at that grid and reported with its
overshoot; the exit status is then 3 (if nothing failed).

SIGTERM or Ctrl-C stops the run after the batch in flight (exit status 143 or 130); running the
same command again resumes it. One run at a time writes into an output folder (.run.lock); a
folder that cannot be written (read-only, full disk) is one error line and exit status 4, before
any model loads. All exit statuses: README, "Exit statuses".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.cli import add_encoder_arguments, add_rate_arguments, config_from_args
from models.config import ConfigError
from models.imageio import OutputError, check_output_not_inside_input
from models.jobcontrol import (ExitStatus, JobInterrupted, MiB, OutputBusy, StopSignals, exit_status_of,
                               guarded_output, stopped_line)
from models.layout import ENCODE_FORMATS

MIN_FREE_PER_IMAGE = MiB  # free space asked for before the models load: a label map, a .sem file, a caption


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--input_dir", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--output_dir", required=True, help="where label maps and prompts.json go")
    parser.add_argument("--overwrite", action="store_true", help="re-encode images already done")
    parser.add_argument("--format", default="both", choices=ENCODE_FORMATS,
                        help="outputs: .sem files, palette PNGs + prompts.json, or both")
    add_rate_arguments(parser)
    parser.add_argument("--seed", type=int, default=None, help="decoding seed stored in .sem files")
    add_encoder_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from models.runtime import is_global_zero  # torch: after --help

    with StopSignals(quiet=not is_global_zero()) as stop:
        try:
            return encode(args, stop)
        except (JobInterrupted, OutputError, OutputBusy) as error:
            if is_global_zero() or isinstance(error, OutputError):  # each process names the file it could not write
                print(stopped_line(error, "encoded"), file=sys.stderr)
            return exit_status_of(error)


def encode(args: argparse.Namespace, stop: StopSignals) -> int:
    """Check, lock, plan, encode and report; the exit status."""
    from models.encode.job import OutputSpec, caption_records, merge_captions, plan_encode, report, run_encode
    from models.encode.segmentation import CheckpointError
    from models.runtime import is_global_zero, resolve_devices

    input_dir, output_dir = Path(args.input_dir), Path(args.output_dir)
    try:
        if not input_dir.is_dir():
            raise ValueError(f"--input_dir {input_dir} is not a folder")
        check_output_not_inside_input(input_dir, output_dir)
        config = config_from_args(args)
        devices = resolve_devices(args)
        outputs = OutputSpec(format=args.format, grid=args.grid, seed=args.seed, target_bytes=args.target_bytes,
                             target_bpp=args.target_bpp)
    except (ValueError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return ExitStatus.USAGE
    with guarded_output(output_dir, config.encode.batch_size * MIN_FREE_PER_IMAGE, hold=is_global_zero()):
        plan = plan_encode(input_dir, output_dir, overwrite=args.overwrite, outputs=outputs)
        if not plan.todo:
            if not is_global_zero():
                return ExitStatus.OK
            if caption_records(output_dir).files():  # captions left by an interrupted run
                merge_captions(output_dir)
            return report(plan, None, output_dir)
        try:
            result = run_encode(plan, config, devices, output_dir, outputs=outputs, stop=stop)
        except OutputError:
            raise
        except (CheckpointError, OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return ExitStatus.USAGE
        return report(plan, result, output_dir) if result.is_global_zero else ExitStatus.OK


if __name__ == "__main__":
    sys.exit(main())
