"""Train the ControlNet decoder on label maps and captions (Stable Diffusion 1.5, Lightning DDP).

    python train.py --config_path configs/config.yaml --sd_model_path PATH --gpus 0 1 \\
        --batch_size_per_gpu 4 --output_dir runs/decoder

Reads data/original_images/{train,val}/ with the label maps and prompts.json under
data/segmented_images/{train,val}/ (see docs/training.md), trains a ControlNet on the frozen
SD1.5 model, and writes the run folder: config.yaml, checkpoints/, logs/ (TensorBoard, CSV),
validation/ image grids and the exported controlnet/. Resume with --resume last. On machines
without GPUs, --accelerator cpu --devices N runs N processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from models.runtime import add_device_arguments, resolve_devices

FLAG_KEYS = {  # flag -> config key it overrides
    "sd_model_path": "diffusion.sd_model_path", "data_root": "train.data_root",
    "output_dir": "train.output_dir", "batch_size_per_gpu": "train.batch_size",
    "max_steps": "train.max_steps", "precision": "train.precision",
    "accumulate_grad_batches": "train.accumulate_grad_batches", "learning_rate": "train.learning_rate",
    "seed": "train.seed",
}
PATH_FLAGS = ("sd_model_path", "data_root", "output_dir")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config_path", default=str(DEFAULT_CONFIG_PATH), help="YAML config")
    parser.add_argument("--sd_model_path", default=None,
                        help="SD1.5: diffusers folder, hub id or single .safetensors/.ckpt file "
                             "(overrides diffusion.sd_model_path)")
    parser.add_argument("--data_root", default=None, help="folder with original_images/ and "
                        "segmented_images/ (overrides train.data_root)")
    parser.add_argument("--output_dir", default=None, help="run folder (overrides train.output_dir)")
    parser.add_argument("--batch_size_per_gpu", type=int, default=None,
                        help="images per device and micro-batch (overrides train.batch_size)")
    parser.add_argument("--max_steps", type=int, default=None, help="optimizer steps (overrides train.max_steps)")
    parser.add_argument("--accumulate_grad_batches", type=int, default=None,
                        help="micro-batches per optimizer step (overrides train.accumulate_grad_batches)")
    parser.add_argument("--precision", choices=("32", "bf16-mixed", "16-mixed"), default=None,
                        help="overrides train.precision; trainable weights stay fp32")
    parser.add_argument("--learning_rate", type=float, default=None, help="overrides train.learning_rate")
    parser.add_argument("--seed", type=int, default=None, help="overrides train.seed")
    parser.add_argument("--resume", default=None, metavar="PATH|last",
                        help="continue from a checkpoint, or from the newest one of --output_dir")
    parser.add_argument("--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="set any config value, e.g. --override train.ema_decay=0.9999")
    parser.add_argument("--no_progress_bar", action="store_true", help="plain log lines only")
    add_device_arguments(parser, gpu_flag="--gpus")
    return parser.parse_args(argv)


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides implied by the dedicated flags, then the generic ones."""
    overrides = []
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if flag in PATH_FLAGS and Path(value).exists():
            value = Path(value).resolve()
        overrides.append(f"{key}={yaml_scalar(value)}")
    return overrides + args.override


def yaml_scalar(value: object) -> str:
    """``value`` as YAML reads it back: "1e-05" would be a string, "1.0e-05" is a float."""
    if isinstance(value, float):
        text = repr(value)
        return text.replace("e", ".0e") if "e" in text and "." not in text else text
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a JSON string is a YAML string: any path survives
    return str(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from models.train.controlnet_module import check_train_config  # torch and diffusers: after --help
    from models.train.data import DataError
    from models.train.run import run_training

    try:
        config = load_config(args.config_path, config_overrides(args))
        check_train_config(config)
        spec = resolve_devices(args)
        if spec.accelerator == "gpu" and not torch.cuda.is_available():
            raise ValueError("GPUs were requested but CUDA is not available; use --accelerator cpu --devices N")
    except (ValueError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        result = run_training(config, spec, resume=args.resume, progress_bar=not args.no_progress_bar)
    except (DataError, OSError, ValueError, ConfigError, MisconfigurationException) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.is_global_zero:
        print(f"trained to step {result.global_step}; checkpoint {result.checkpoint}; "
              f"ControlNet exported to {result.controlnet_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
