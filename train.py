"""Train the ControlNet decoder on label maps and captions (Stable Diffusion 1.5, Lightning DDP).

    python train.py --config_path configs/config.yaml --sd_model_path PATH --gpus 0 1 \\
        --batch_size_per_gpu 4 --output_dir runs/decoder

Reads data/original_images/{train,val}/ with the label maps and prompts.json under
data/segmented_images/{train,val}/ (see docs/training.md), trains a ControlNet on the frozen
SD1.5 model, and writes the run folder: config.yaml, checkpoints/, logs/ (TensorBoard, CSV),
validation/ images and the exported controlnet/. Resume with --resume last; --resume auto also
starts fresh when there is nothing to resume (one sbatch line for the first start and a requeue).
SIGTERM or Ctrl-C saves the step in progress and exits with 128 + the signal (143, 130). On
machines without GPUs, --accelerator cpu --devices N runs N processes.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from models.cli import add_config_arguments, add_device_arguments, config_flag, config_from_args
from models.config import Config, ConfigError
from models.jobcontrol import (ExitStatus, JobInterrupted, OutputBusy, OutputError, StopSignals, error_line,
                               exit_status_of, guarded_output)

if TYPE_CHECKING:
    from models.runtime import DeviceSpec


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_arguments(parser)
    config_flag(parser, "--sd_model_path", "diffusion.sd_model_path",
                "SD1.5: diffusers folder, hub id or single .safetensors/.ckpt file")
    config_flag(parser, "--data_root", "train.data_root", "folder with original_images/ and segmented_images/")
    config_flag(parser, "--output_dir", "train.output_dir", "run folder")
    config_flag(parser, "--batch_size_per_gpu", "train.batch_size", "images per device and micro-batch")
    config_flag(parser, "--max_steps", "train.max_steps", "optimizer steps")
    config_flag(parser, "--accumulate_grad_batches", "train.accumulate_grad_batches",
                "micro-batches per optimizer step")
    config_flag(parser, "--precision", "train.precision", "trainable weights stay fp32")
    config_flag(parser, "--learning_rate", "train.learning_rate", "AdamW learning rate of the ControlNet")
    config_flag(parser, "--seed", "train.seed", "seed of data order, augmentation, noise and timesteps")
    parser.add_argument("--resume", default=None, metavar="PATH|last|auto",
                        help="continue from a checkpoint, or from the newest one of --output_dir (auto: "
                             "or start fresh if it has none)")
    parser.add_argument("--no_progress_bar", action="store_true", help="plain log lines only")
    add_device_arguments(parser, gpu_flag="--gpus")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch  # torch, Lightning and diffusers: after --help

    from models.runtime import resolve_devices
    from models.train.controlnet_module import check_train_config

    try:
        config = config_from_args(args)
        check_train_config(config)
        devices = resolve_devices(args)
        if devices.accelerator == "gpu" and not torch.cuda.is_available():
            raise ValueError("GPUs were requested but CUDA is not available; use --accelerator cpu --devices N")
    except (ValueError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return ExitStatus.USAGE
    return run_job(config, devices, args)


def run_job(config: Config, devices: DeviceSpec, args: argparse.Namespace) -> int:
    """Run training under the job controls: signals, the run folder's check and lock; one line and
    an exit status for what stops it (ranks other than 0 exit with the same status, silently)."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from models.runtime import is_global_zero
    from models.train.data import DataError
    from models.train.run import MIN_FREE_BYTES, run_training
    from models.train.stopping import RESUME_ADVICE, interrupted_report

    rank_zero = is_global_zero()
    try:
        with StopSignals(quiet=not rank_zero) as stop, \
                guarded_output(config.train.output_dir, MIN_FREE_BYTES, hold=rank_zero):
            result = run_training(config, devices, resume=args.resume, progress_bar=not args.no_progress_bar,
                                  stop=stop)
    except JobInterrupted as error:
        if rank_zero:
            print(interrupted_report(error), file=sys.stderr)
        return exit_status_of(error)
    except (OutputError, OutputBusy) as error:
        if rank_zero:
            print(error_line(error, RESUME_ADVICE), file=sys.stderr)
        return exit_status_of(error)
    except (DataError, OSError, ValueError, ConfigError, MisconfigurationException) as error:
        print(f"error: {error}", file=sys.stderr)
        return ExitStatus.USAGE
    if result.is_global_zero:
        print(f"trained to step {result.global_step}; checkpoint {result.checkpoint}; "
              f"ControlNet exported to {result.controlnet_dir}")
    return ExitStatus.OK


if __name__ == "__main__":
    sys.exit(main())
