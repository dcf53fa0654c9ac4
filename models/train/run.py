"""One training run of the decoder: its folder, the Lightning Trainer, resume and export.

Run folder (``train.output_dir``), written by rank 0 only:

    config.yaml                the full config the run used
    checkpoints/step-NNNNNNN.ckpt  Lightning checkpoints (trainable weights + optimizer state)
    checkpoints/last.ckpt          a link to the newest of them
    logs/tensorboard/version_K/    TensorBoard events (loss, learning rate, image grids)
    logs/csv/version_K/metrics.csv the same scalars as CSV
    validation/step-NNNNNNN/       the first validation label maps decoded as process_decoding.py would
    validation/step-NNNNNNN.png    those in a grid: label map | decoded | photograph
    controlnet/                    the exported ControlNet (save_pretrained + metadata)

``--resume last`` continues from the newest ``step-*.ckpt``; a fresh run refuses a folder that
already holds checkpoints, so two runs never mix.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.strategies import DDPStrategy

from models.config import Config, save_config
from models.imageio import atomic_path
from models.decode.stable_diffusion import SDComponents
from models.runtime import DeviceSpec, is_global_zero
from models.train.controlnet_module import ControlNetModule
from models.train.data import DecoderDataModule
from models.train.validation import ValidationImages

CHECKPOINT_PATTERN = re.compile(r"step-(\d+)\.ckpt$")
LAST_CHECKPOINT = "last.ckpt"  # a link to the newest step checkpoint


class RunPaths:
    """Where a run writes each kind of output (the layout in this module's docstring)."""

    def __init__(self, root: Path):
        self.root = root
        self.config = root / "config.yaml"
        self.checkpoints = root / "checkpoints"
        self.logs = root / "logs"
        self.validation = root / "validation"
        self.controlnet = root / "controlnet"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:07d}.ckpt"


def newest_checkpoint(checkpoint_dir: Path, skip: set[Path] | frozenset = frozenset()) -> Path | None:
    """The ``step-*.ckpt`` with the highest step (other than those in ``skip``), or None."""
    found = [(int(m.group(1)), path) for path in checkpoint_dir.glob("step-*.ckpt")
             if (m := CHECKPOINT_PATTERN.search(path.name)) and path not in skip]
    return max(found)[1] if found else None


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is no usable checkpoint (cut short by a full disk or a kill, say), or None.
    Reads only the zip directory at the end of the file, which a truncated file lacks."""
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") for name in archive.namelist()):
                return "not a torch checkpoint"
    except (zipfile.BadZipFile, OSError) as error:
        return f"unreadable: {error}"
    return None


def newest_readable_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest ``step-*.ckpt`` that reads as a checkpoint; newer unreadable ones are renamed
    ``*.ckpt.unreadable`` (by rank 0, with a warning) so that the run can write those steps again."""
    passed_over: set[Path] = set()  # other ranks pass over what rank 0 sets aside
    while (path := newest_checkpoint(checkpoint_dir, passed_over)) is not None:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        passed_over.add(path)
        if is_global_zero():
            aside = path.with_name(path.name + ".unreadable")
            print(f"warning: --resume last: {path} is {problem}; set aside as {aside.name}, trying the one before",
                  file=sys.stderr)
            os.replace(path, aside)
    return None


def resolve_resume(resume: str | None, paths: RunPaths) -> Path | None:
    """The checkpoint to resume from (``last``: the newest of this run); checks a fresh run's folder."""
    if resume is None:
        existing = newest_checkpoint(paths.checkpoints) if paths.checkpoints.is_dir() else None
        if existing is not None:
            raise ValueError(f"{paths.root} already holds checkpoints ({existing.name}); continue it with "
                             f"--resume last, or choose another --output_dir")
        return None
    if resume == "last":
        path = newest_readable_checkpoint(paths.checkpoints) if paths.checkpoints.is_dir() else None
        if path is None:
            raise ValueError(f"--resume last: no readable step-*.ckpt in {paths.checkpoints}")
        return path
    if not Path(resume).is_file():
        raise ValueError(f"--resume {resume}: no such checkpoint file")
    return Path(resume)


class FinalCheckpoint(Callback):
    """Saves the last step when it is not a multiple of the periodic interval, and points
    ``last.ckpt`` at it."""

    def __init__(self, paths: RunPaths, every_n_steps: int):
        self.paths, self.every_n_steps = paths, every_n_steps

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps:  # same decision on every rank
            trainer.save_checkpoint(self.paths.checkpoint(step), weights_only=False)
            if trainer.is_global_zero:
                link_last(self.paths.checkpoint(step))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside their name, flushed to disk, then renamed.
    A full disk or a kill mid-write leaves no partial ``step-*.ckpt``: Lightning's own writer
    stages the file in ``$TMPDIR`` and copies it into place when that is another file system."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options are not supported by AtomicCheckpointIO")
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())


def remove_partial_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that were killed (``.step-*.tmp``)."""
    partial = sorted(checkpoint_dir.glob(".*.ckpt.*.tmp")) if checkpoint_dir.is_dir() else []
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


class StepCheckpoints(ModelCheckpoint):
    """Lightning's periodic checkpoints ``step-NNNNNNN.ckpt``, newest ``keep`` kept, with
    ``last.ckpt`` linked to the newest right after each save (Lightning's own ``save_last``
    would write a full copy when the run ends between two periodic saves)."""

    def __init__(self, paths: RunPaths, every_n_steps: int, keep: int):
        super().__init__(dirpath=paths.checkpoints, filename="step-{step:07d}", auto_insert_metric_name=False,
                         every_n_train_steps=every_n_steps, save_top_k=keep, monitor="step", mode="max")

    def on_train_batch_end(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, *args, **kwargs)
        # monitor "step", mode "max": the newest step checkpoint (of another folder when resumed from one)
        newest = Path(self.best_model_path) if self.best_model_path else None
        if trainer.is_global_zero and newest and newest.parent == Path(self.dirpath) and newest.is_file():
            last = newest.with_name(LAST_CHECKPOINT)
            if not last.is_symlink() or os.readlink(last) != newest.name:
                link_last(newest)


def link_last(checkpoint: Path) -> None:
    """Make ``last.ckpt`` beside ``checkpoint`` a relative link to it (replaced atomically)."""
    last = checkpoint.with_name(LAST_CHECKPOINT)
    temporary = last.with_name(f".{LAST_CHECKPOINT}.tmp")
    temporary.unlink(missing_ok=True)
    os.symlink(checkpoint.name, temporary)
    os.replace(temporary, last)


def build_trainer(config: Config, devices: DeviceSpec, paths: RunPaths, has_validation: bool,
                  progress_bar: bool = True) -> pl.Trainer:
    """A Trainer that checkpoints, validates and logs as ``config.train`` says."""
    train = config.train
    periodic = StepCheckpoints(paths, train.checkpoint_every_n_steps, train.keep_checkpoints)
    strategy = DDPStrategy(find_unused_parameters=False) if devices.world_size > 1 else "auto"
    return pl.Trainer(
        accelerator=devices.accelerator, devices=devices.devices, num_nodes=devices.num_nodes, strategy=strategy,
        precision=train.precision, max_steps=train.max_steps,
        accumulate_grad_batches=train.accumulate_grad_batches, gradient_clip_val=train.max_grad_norm,
        val_check_interval=train.val_every_n_steps * train.accumulate_grad_batches,
        check_val_every_n_epoch=None, limit_val_batches=1.0 if has_validation else 0,
        num_sanity_val_steps=0, log_every_n_steps=train.log_every_n_steps,
        logger=[TensorBoardLogger(paths.logs, name="tensorboard"), CSVLogger(paths.logs, name="csv")],
        callbacks=[periodic, FinalCheckpoint(paths, train.checkpoint_every_n_steps),
                   LearningRateMonitor(logging_interval="step"), ValidationImages(paths.validation)],
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # EndlessShardSampler shards and resumes the data itself
        enable_progress_bar=progress_bar, default_root_dir=paths.root,
    )


@dataclass
class TrainResult:
    """What a finished run left behind (meaningful on rank 0)."""

    global_step: int
    checkpoint: Path | None
    controlnet_dir: Path | None
    is_global_zero: bool


def run_training(config: Config, devices: DeviceSpec, resume: str | None = None,
                 components: SDComponents | None = None, progress_bar: bool = True) -> TrainResult:
    """Train, checkpoint and export; every rank calls this (DDP re-runs the script per rank)."""
    paths = RunPaths(Path(config.train.output_dir))
    resume_path = resolve_resume(resume, paths)
    datamodule = DecoderDataModule(config)
    if is_global_zero():
        for path in remove_partial_checkpoints(paths.checkpoints):
            print(f"removed {path.name}, left by a checkpoint write that was stopped", file=sys.stderr)
        save_config(config, paths.config)
        print(f"run folder {paths.root}: {devices.world_size} process(es) x batch {config.train.batch_size} "
              f"x accumulation {config.train.accumulate_grad_batches} = "
              f"{devices.world_size * config.train.batch_size * config.train.accumulate_grad_batches} "
              f"images per step" + (f"; resuming from {resume_path}" if resume_path else ""))
    module = ControlNetModule(config, components, datamodule.options.label_set)
    trainer = build_trainer(config, devices, paths, datamodule.val_dataset is not None, progress_bar)
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")  # frozen SD1.5
    if resume_path is not None:
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path, weights_only=True)
    if not trainer.is_global_zero:
        return TrainResult(trainer.global_step, None, None, False)
    export_dir = module.export(paths.controlnet)
    return TrainResult(trainer.global_step, newest_checkpoint(paths.checkpoints), export_dir, True)
