"""Decode label maps and captions into images with a ControlNet on Stable Diffusion 1.5.

    python process_decoding.py --checkpoint_path output/controlnet --input_path data/segmented_images \
        --output_dir data/decoded_images [--prompt_json_path data/segmented_images/prompts.json]

For every label map under --input_path (a palette PNG whose pixel values are class ids, as
process_input.py writes them) this writes an image at the same relative path (.png) and the same
size, and manifest.json records the settings and seed of every image. --checkpoint_path is a
training checkpoint, an exported or diffusers ControlNet folder, a Hugging Face id, or an
original-format ControlNet file (docs/decoding.md). Bad inputs are reported one line each; the
others are still decoded, and the exit status is 1 if anything failed.

SIGTERM or Ctrl-C stops the run after the batch in flight (exit status 143 or 130); the same
command with --skip_existing resumes it. One run at a time writes into an output folder
(.run.lock); a folder that cannot be written (read-only, full disk) is one error line and exit
status 4, before any model loads. All exit statuses: README, "Exit statuses".
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from models.cli import add_config_arguments, add_device_arguments, config_flag, config_from_args
from models.config import Config, ConfigError
from models.imageio import OutputError, check_output_not_inside_input
from models.jobcontrol import (ExitStatus, JobInterrupted, MiB, OutputBusy, StopSignals, exit_status_of,
                               guarded_output, stopped_line)
from models.layout import PROMPTS_FILE, CaptionIndex, has_sem_files

if TYPE_CHECKING:  # torch: imported when decoding starts, not for --help
    from models.runtime import DeviceSpec

MIN_FREE_PER_IMAGE = 4 * MiB  # free space asked for before the models load: one decoded PNG (1.3 MP, incompressible)
RESUME = "run the same command with --skip_existing to resume"

# Flags that set one key of the config's decode section (the config holds their defaults).
DECODE_FLAGS = {
    "num_inference_steps": "sampler steps",
    "scheduler": "sampler",
    "guidance_scale": "classifier-free guidance scale; <= 1 turns guidance off",
    "controlnet_conditioning_scale": "weight of the ControlNet's residuals",
    "negative_prompt": "text for the unguided half of guidance",
    "seed": "base seed, hashed with each image's relative path",
    "batch_size": "images per forward pass",
    "resolution": "generation size: the short side, or the square's side",
    "palette": "control-image colours (ade20k: lllyasviel/sd-controlnet-seg)",
    "control_range": "control values in [0, 1] (unit) or [-1, 1] (signed)",
    "keep_aspect": "generate at the image's aspect ratio; --no-keep_aspect stretches to a square as the "
                   "original project (unset: by checkpoint format)",
    "generation_scale": "with the aspect ratio kept: short side = resolution (objects at the scale of "
                        "training's crops) or area = resolution^2 (the earlier rule)",
    "attention_slicing": "attention in slices (less memory)",
    "vae_slicing": "VAE-decode one image at a time",
    "vae_tiling": "VAE-decode in tiles (large images)",
    "cpu_offload": "keep models on the CPU until each runs",
    "allow_pickle": "load checkpoints that need pickle (trusted files only)",
    "compile": "torch.compile UNet and ControlNet",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_arguments(parser)
    config_flag(parser, "--checkpoint_path", "diffusion.controlnet_path",
                "ControlNet: training .ckpt, exported/diffusers folder, hub id or original-format file")
    parser.add_argument("--input_path", required=True, help="folder of label maps (searched recursively)")
    parser.add_argument("--output_dir", required=True, help="where decoded images and manifest.json go")
    parser.add_argument("--prompt_json_path", default=None,
                        help=f"captions {{relative image path: caption}} (default: <input_path>/{PROMPTS_FILE})")
    config_flag(parser, "--use_fp16", "decode.precision", "half precision (GPU only; ignored on the CPU)",
                const="16")
    parser.add_argument("--skip_existing", action="store_true",
                        help="keep images a previous run with the same settings finished")
    config_flag(parser, "--sd_model_path", "diffusion.sd_model_path", "Stable Diffusion 1.5 folder or hub id")
    for flag, text in DECODE_FLAGS.items():
        config_flag(parser, f"--{flag}", f"decode.{flag}", text)
    add_device_arguments(parser, gpu_flag="--gpu_ids")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class DecodeSetup:
    """Everything ``main`` needs before the models load."""

    input_dir: Path
    output_dir: Path
    config: Config
    devices: DeviceSpec
    precision: str  # what decoding runs at: "32" on the CPU whatever the config says
    captions: CaptionIndex
    prompts_path: Path


def setup(args: argparse.Namespace) -> DecodeSetup:
    """Config, devices, precision and captions, or ValueError/ConfigError with a clear message."""
    from models.decode.job import read_caption_index
    from models.runtime import is_global_zero, resolve_devices

    input_dir, output_dir = Path(args.input_path), Path(args.output_dir)
    if not input_dir.is_dir():
        raise ValueError(f"--input_path {input_dir} is not a folder")
    check_output_not_inside_input(input_dir, output_dir, input_flag="--input_path")
    config = config_from_args(args)
    devices = resolve_devices(args)
    precision = config.decode.precision
    if devices.accelerator == "cpu" and precision != "32":
        if is_global_zero():
            print(f"warning: precision {precision} is ignored on the CPU; decoding in float32", file=sys.stderr)
        precision = "32"
    prompts_path = Path(args.prompt_json_path or input_dir / PROMPTS_FILE)
    if not prompts_path.exists() and not args.prompt_json_path and (
            has_sem_files(input_dir) or config.decode.missing_caption == "empty"):  # .sem files hold captions
        captions = CaptionIndex({})
    else:
        captions = read_caption_index(prompts_path)
    return DecodeSetup(input_dir, output_dir, config, devices, precision, captions, prompts_path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from models.runtime import is_global_zero  # torch: after --help

    with StopSignals(quiet=not is_global_zero()) as stop:
        try:
            return decode(args, stop)
        except (JobInterrupted, OutputError, OutputBusy) as error:
            if is_global_zero() or isinstance(error, OutputError):  # each process names the file it could not write
                print(stopped_line(error, "decoded", RESUME), file=sys.stderr)
            return exit_status_of(error)


def decode(args: argparse.Namespace, stop: StopSignals) -> int:
    """Check, lock, load, plan, decode and report; the exit status."""
    from models.decode.decoder import ControlNetDecoder  # torch, diffusers: after --help
    from models.decode.job import SettingsMismatch, plan_decode, prepare_output, report, run_decode, run_settings
    from models.runtime import is_global_zero

    try:
        run = setup(args)
    except (ValueError, ConfigError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return ExitStatus.USAGE
    with guarded_output(run.output_dir, run.config.decode.batch_size * MIN_FREE_PER_IMAGE, hold=is_global_zero()):
        try:
            decoder = ControlNetDecoder.from_config(run.config)
        except OutputError:
            raise
        except (ValueError, ConfigError, OSError) as error:  # CheckpointFormatError is a ValueError
            print(f"error: {error}", file=sys.stderr)
            return ExitStatus.USAGE
        if is_global_zero():
            print(decoder.note)
            for warning in decoder.warnings:
                print(f"warning: {warning}", file=sys.stderr)
        stop.check()
        plan = plan_decode(run.input_dir, run.captions, decoder, run.config, skip_files=(run.prompts_path.resolve(),))
        settings = run_settings(decoder, run.config, run.precision)
        try:
            plan.done = prepare_output(run.output_dir, settings, args.skip_existing, is_global_zero())
        except SettingsMismatch as error:
            print(f"error: {error}", file=sys.stderr)
            return ExitStatus.USAGE
        if not plan.todo_batches:
            return report(plan, None, run.output_dir) if is_global_zero() else ExitStatus.OK
        result = run_decode(plan, decoder, run.devices, run.output_dir, settings, run.config.decode.cpu_offload,
                            stop=stop)
        return report(plan, result, run.output_dir) if result.is_global_zero else ExitStatus.OK


if __name__ == "__main__":
    sys.exit(main())
