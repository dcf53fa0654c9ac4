"""Decode label maps and captions into images with a ControlNet on Stable Diffusion 1.5.

    python process_decoding.py --checkpoint_path output/controlnet --input_path data/segmented_images \
        --output_dir data/decoded_images [--prompt_json_path data/segmented_images/prompts.json]

For every label map under --input_path (a palette PNG whose pixel values are class ids, as
process_input.py writes them) this writes an image at the same relative path (.png) and the same
size, and manifest.json records the settings and seed of every image. --checkpoint_path is a
training checkpoint, an exported or diffusers ControlNet folder, a Hugging Face id, or an
original-format ControlNet file (docs/decoding.md). Bad inputs are reported one line each; the
others are still decoded, and the exit status is 1 if anything failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.bitstream import SEM_SUFFIX
from models.config import DEFAULT_CONFIG_PATH, ConfigError, DecodeConfig, load_config
from models.decode.job import (PROMPTS_FILE, Captions, SettingsMismatch, plan_decode, prepare_output,
                               read_prompts, report, run_decode, run_settings)
from models.decode.decoder import SCHEDULERS, ControlNetDecoder
from models.imageio import check_output_not_inside_input
from models.runtime import add_device_arguments, is_global_zero, resolve_devices

# Flags that set one key of the config's decode section (the config holds their defaults).
DECODE_FLAGS = {
    "num_inference_steps": (int, None, "sampler steps"),
    "scheduler": (str, tuple(SCHEDULERS), "sampler"),
    "guidance_scale": (float, None, "classifier-free guidance scale; <= 1 turns guidance off"),
    "controlnet_conditioning_scale": (float, None, "weight of the ControlNet's residuals"),
    "negative_prompt": (str, None, "text for the unguided half of guidance"),
    "seed": (int, None, "base seed, hashed with each image's relative path"),
    "batch_size": (int, None, "images per forward pass"),
    "resolution": (int, None, "generation size (multiple of 8)"),
    "palette": (str, ("voc", "ade20k"), "control-image colours (ade20k: lllyasviel/sd-controlnet-seg)"),
    "control_range": (str, ("unit", "signed"), "control values in [0, 1] (unit) or [-1, 1] (signed)"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config_path", default=str(DEFAULT_CONFIG_PATH), help="YAML config")
    parser.add_argument("--checkpoint_path", default=argparse.SUPPRESS,
                        help="ControlNet: training .ckpt, exported/diffusers folder, hub id or original-format "
                             "file (default: diffusion.controlnet_path)")
    parser.add_argument("--input_path", required=True, help="folder of label maps (searched recursively)")
    parser.add_argument("--output_dir", required=True, help="where decoded images and manifest.json go")
    parser.add_argument("--prompt_json_path", default=argparse.SUPPRESS,
                        help=f"captions {{relative image path: caption}} (default: <input_path>/{PROMPTS_FILE})")
    parser.add_argument("--use_fp16", action="store_true", help="half precision (GPU only; ignored on the CPU)")
    parser.add_argument("--skip_existing", action="store_true",
                        help="keep images a previous run with the same settings finished")
    parser.add_argument("--sd_model_path", default=argparse.SUPPRESS,
                        help="Stable Diffusion 1.5 folder or hub id (default: diffusion.sd_model_path)")
    defaults = DecodeConfig()
    for flag, (kind, choices, text) in DECODE_FLAGS.items():  # absent flags leave the config alone
        parser.add_argument(f"--{flag}", type=kind, choices=choices, default=argparse.SUPPRESS,
                            help=f"{text} (default: decode.{flag}, {getattr(defaults, flag)!r} unless configured)")
    parser.add_argument("--keep_aspect", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                        help="generate at the image's aspect ratio; --no-keep_aspect stretches to a square "
                             "as the original project (default: decode.keep_aspect; unset: by checkpoint format)")
    for flag in ("attention_slicing", "vae_slicing", "vae_tiling", "cpu_offload", "allow_pickle", "compile"):
        parser.add_argument(f"--{flag}", action="store_true", help=f"sets decode.{flag}")
    parser.add_argument("--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="set any config value, e.g. --override decode.missing_caption=empty")
    add_device_arguments(parser, gpu_flag="--gpu_ids")
    return parser.parse_args(argv)


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides implied by the dedicated flags, then the generic ones."""
    overrides = [f"decode.{flag}={_yaml_text(getattr(args, flag))}" for flag in DECODE_FLAGS if flag in args]
    if "keep_aspect" in args:
        overrides.append(f"decode.keep_aspect={str(args.keep_aspect).lower()}")
    if "sd_model_path" in args:
        overrides.append(f"diffusion.sd_model_path={_yaml_text(args.sd_model_path)}")
    if args.use_fp16:
        overrides.append("decode.precision='16'")
    for flag in ("attention_slicing", "vae_slicing", "vae_tiling", "cpu_offload", "allow_pickle", "compile"):
        if getattr(args, flag):
            overrides.append(f"decode.{flag}=true")
    return overrides + args.override


def _yaml_text(value: object) -> str:
    """A flag value as YAML text that parses back to the same type (strings are quoted)."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def setup(args: argparse.Namespace):
    """Config, devices, precision and prompts, or ValueError/ConfigError with a clear message."""
    input_dir, output_dir = Path(args.input_path), Path(args.output_dir)
    if not input_dir.is_dir():
        raise ValueError(f"--input_path {input_dir} is not a folder")
    check_output_not_inside_input(input_dir, output_dir, input_flag="--input_path")
    config = load_config(args.config_path, config_overrides(args))
    spec = resolve_devices(args)
    precision = config.decode.precision
    if spec.accelerator == "cpu" and precision != "32":
        if is_global_zero():
            print(f"warning: precision {precision} is ignored on the CPU; decoding in float32", file=sys.stderr)
        precision = "32"
    given = getattr(args, "prompt_json_path", None)
    prompts_path = Path(given) if given else input_dir / PROMPTS_FILE
    carries_captions = any(input_dir.rglob(f"*{SEM_SUFFIX}"))  # .sem files hold their captions
    if not prompts_path.exists() and not given and (carries_captions or config.decode.missing_caption == "empty"):
        captions = Captions({})
    else:
        captions = read_prompts(prompts_path)
    return input_dir, output_dir, config, spec, precision, captions, prompts_path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        input_dir, output_dir, config, spec, precision, captions, prompts_path = setup(args)
        decoder = ControlNetDecoder.from_config(config, getattr(args, "checkpoint_path", None))
    except (ValueError, ConfigError, OSError) as error:  # CheckpointFormatError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    if is_global_zero():
        print(decoder.note)
    plan = plan_decode(input_dir, captions, decoder, config, skip_files=(prompts_path.resolve(),))
    settings = run_settings(decoder, config, precision)
    try:
        plan.done = prepare_output(output_dir, settings, args.skip_existing, is_global_zero())
    except SettingsMismatch as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not plan.todo_batches:
        return report(plan, None, output_dir) if is_global_zero() else 0
    result = run_decode(plan, decoder, spec, output_dir, settings, config.decode.cpu_offload)
    return report(plan, result, output_dir) if result.is_global_zero else 0


if __name__ == "__main__":
    sys.exit(main())
