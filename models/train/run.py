"""One training run of the decoder: its folder, the Lightning Trainer, resume, stopping and export.

Run folder (``train.output_dir``), written by rank 0 only:

    config.yaml                the full config the run used
    checkpoints/step-NNNNNNN.ckpt  Lightning checkpoints (trainable weights + optimizer state)
    checkpoints/last.ckpt          a link to the newest of them
    hpc_ckpt_K.ckpt            the checkpoint a SLURM requeue signal saved (Lightning's name and place)
    logs/tensorboard/version_K/    TensorBoard events (loss, learning rate, image grids)
    logs/csv/version_K/metrics.csv the same scalars as CSV
    validation/step-NNNNNNN/       the first validation label maps decoded as process_decoding.py would
    validation/step-NNNNNNN.png    those in a grid: label map | decoded | photograph
    controlnet/                    the exported ControlNet (save_pretrained + metadata)

``--resume last`` continues from the newest checkpoint (``step-*.ckpt`` or ``hpc_ckpt_*.ckpt``),
``--resume auto`` too, or starts fresh when there is none; a fresh run refuses a folder that
already holds checkpoints, so two runs never mix. SIGTERM, Ctrl-C and SLURM's requeue signal end
the run at the end of an optimizer step with that step saved (``StopCheckpoint``).
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import re
import signal
import sys
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities.exceptions import SIGTERMException

from models.config import Config, save_config
from models.decode.stable_diffusion import SDComponents
from models.imageio import OUTPUT_ERRNOS, OutputError, atomic_path
from models.jobcontrol import JobInterrupted, MiB, StopSignals
from models.runtime import DeviceSpec, is_global_zero
from models.train.controlnet_module import ControlNetModule
from models.train.data import DecoderDataModule
from models.train.stopping import StopCheckpoint, TrainingStopped, end_data_workers
from models.train.validation import ValidationImages

CHECKPOINT_PATTERN = re.compile(r"step-(\d+)\.ckpt$")
HPC_CHECKPOINT_PATTERN = re.compile(r"hpc_ckpt_(\d+)\.ckpt")  # Lightning's SLURM checkpoints, in the run folder
LAST_CHECKPOINT = "last.ckpt"  # a link to the newest step checkpoint
MIN_FREE_BYTES = 64 * MiB  # checked before any model loads; an SD1.5 checkpoint needs 4.3 GB more
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})  # only writing meets these


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

    def hpc_checkpoints(self) -> list[Path]:
        """Lightning's ``hpc_ckpt_K.ckpt`` in the run folder, by K."""
        found = [(int(m.group(1)), path) for path in self.root.glob("hpc_ckpt_*.ckpt")
                 if (m := HPC_CHECKPOINT_PATTERN.fullmatch(path.name))] if self.root.is_dir() else []
        return [path for _, path in sorted(found)]

    def next_hpc_checkpoint(self) -> Path:
        """Lightning's name for the next SLURM checkpoint: ``hpc_ckpt_<highest K + 1>.ckpt``."""
        numbers = [int(HPC_CHECKPOINT_PATTERN.fullmatch(path.name).group(1)) for path in self.hpc_checkpoints()]
        return self.root / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


def newest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The ``step-*.ckpt`` with the highest step, or None."""
    found = [(int(m.group(1)), path) for path in checkpoint_dir.glob("step-*.ckpt")
             if (m := CHECKPOINT_PATTERN.search(path.name))]
    return max(found)[1] if found else None


def run_checkpoints(paths: RunPaths) -> list[Path]:
    """Every checkpoint of a run: ``checkpoints/step-*.ckpt`` and the run folder's ``hpc_ckpt_*.ckpt``."""
    steps = sorted(path for path in paths.checkpoints.glob("step-*.ckpt") if CHECKPOINT_PATTERN.search(path.name)) \
        if paths.checkpoints.is_dir() else []
    return steps + paths.hpc_checkpoints()


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint holds: from a ``step-N.ckpt`` name, else its ``global_step``
    (read with the tensors memory-mapped, not loaded)."""
    if match := CHECKPOINT_PATTERN.search(path.name):
        return int(match.group(1))
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


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


def set_aside(path: Path, problem: str) -> None:
    """Rename an unreadable checkpoint ``*.unreadable`` (rank 0, with a warning) so that the run can
    write its step again. ``hpc_ckpt_`` leaves the name too: under SLURM, Lightning resumes a run
    started without a checkpoint from any file whose name holds it."""
    if is_global_zero():
        aside = path.with_name(path.name.replace("hpc_ckpt_", "hpc-ckpt-") + ".unreadable")
        print(f"warning: resuming: {path} is {problem}; set aside as {aside.name}, trying the one before",
              file=sys.stderr)
        os.replace(path, aside)


def newest_readable_checkpoint(paths: RunPaths) -> Path | None:
    """The readable checkpoint of the run that holds the highest step; on a tie (a SLURM requeue at a
    periodic step) the later written. Step checkpoints hold their step in their name, ``hpc_ckpt_K``
    only inside (K counts requeues). Unreadable ones met on the way are set aside (``set_aside``);
    other ranks pass over what rank 0 sets aside."""
    candidates = []
    for path in run_checkpoints(paths):
        try:
            candidates.append((checkpoint_step(path), path.stat().st_mtime_ns, path))
        except Exception as error:  # an hpc_ckpt cut short, or a file rank 0 set aside meanwhile
            set_aside(path, checkpoint_problem(path) or f"unreadable: {error}")
    for *_, path in sorted(candidates, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        set_aside(path, problem)
    return None


def resolve_resume(resume: str | None, paths: RunPaths) -> Path | None:
    """The checkpoint to resume from (``last``: the newest of this run; ``auto``: that, or None for a
    fresh start when there is none); checks a fresh run's folder."""
    if resume is None:
        existing = run_checkpoints(paths)
        if existing:
            raise ValueError(f"{paths.root} already holds checkpoints ({existing[-1].name}); continue it with "
                             f"--resume last (or auto), or choose another --output_dir")
        return None
    if resume in ("last", "auto"):
        path = newest_readable_checkpoint(paths)
        if path is None and resume == "last":
            raise ValueError(f"--resume last: no readable step-*.ckpt in {paths.checkpoints} "
                             f"nor hpc_ckpt_*.ckpt in {paths.root}")
        return path
    if not Path(resume).is_file():
        raise ValueError(f"--resume {resume}: no such checkpoint file")
    return Path(resume)


def os_error_behind(error: BaseException, errnos: frozenset[int], messages: bool = False) -> OSError | None:
    """The ``OSError`` with an errno in ``errnos`` that ``error`` is or was raised over (torch's zip
    writer raises a RuntimeError with it as context); with ``messages``, also one named only in the
    message (safetensors: "... No space left on device ...")."""
    seen, current = set(), error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in errnos:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    for code in sorted(errnos) if messages else ():
        if os.strerror(code) in str(error):
            return OSError(code, os.strerror(code))
    return None


@contextlib.contextmanager
def destination_errors(path: Path, errnos: frozenset[int] = OUTPUT_ERRNOS, messages: bool = True) -> Iterator[None]:
    """Turn a failure to write under ``path`` that its destination caused (full disk, read-only
    folder, no permission), whatever the writer wraps it in, into ``OutputError`` naming the file."""
    try:
        yield
    except OutputError:
        raise
    except Exception as error:
        cause = os_error_behind(error, errnos, messages)
        if cause is None:
            raise
        raise OutputError(cause.filename or path, cause) from error


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
    stages the file in ``$TMPDIR`` and copies it into place when that is another file system.
    A write that fails for want of space or permission raises ``OutputError`` naming the checkpoint
    (torch's zip writer reports it as a RuntimeError raised over the OSError)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options are not supported by AtomicCheckpointIO")
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            with destination_errors(Path(path)):
                torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())


class StepCheckpoints(ModelCheckpoint):
    """Lightning's periodic checkpoints ``step-NNNNNNN.ckpt``, newest ``keep`` kept, with
    ``last.ckpt`` linked to the newest right after each save (Lightning's own ``save_last``
    would write a full copy when the run ends between two periodic saves)."""

    def __init__(self, paths: RunPaths, every_n_steps: int, keep: int):
        super().__init__(dirpath=paths.checkpoints, filename="step-{step:07d}", auto_insert_metric_name=False,
                         every_n_train_steps=every_n_steps, save_top_k=keep, monitor="step", mode="max")
        self.paths = paths

    def on_train_batch_end(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, *args, **kwargs)
        self.link_newest(trainer)

    def link_newest(self, trainer: pl.Trainer) -> None:
        """Point ``last.ckpt`` at the newest step checkpoint of this folder (rank 0)."""
        # monitor "step", mode "max": the newest step checkpoint (of another folder when resumed from one)
        newest = Path(self.best_model_path) if self.best_model_path else None
        if trainer.is_global_zero and newest and newest.parent == Path(self.dirpath) and newest.is_file():
            last = newest.with_name(LAST_CHECKPOINT)
            if not last.is_symlink() or os.readlink(last) != newest.name:
                link_last(newest)

    def save_step(self, trainer: pl.Trainer) -> Path:
        """Save this step now as one of the periodic checkpoints (counted in ``keep`` and removed
        with them), unless it just was; every rank calls this. Its path."""
        path = self.paths.checkpoint(trainer.global_step)
        if self._last_global_step_saved == trainer.global_step:
            return path
        if self.save_top_k == 0:  # the run keeps no periodic checkpoints: this one stays
            trainer.save_checkpoint(path, weights_only=False)
            if trainer.is_global_zero:
                link_last(path)
            return path
        self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
        self.link_newest(trainer)
        return path


def link_last(checkpoint: Path) -> None:
    """Make ``last.ckpt`` beside ``checkpoint`` a relative link to it (replaced atomically)."""
    last = checkpoint.with_name(LAST_CHECKPOINT)
    temporary = last.with_name(f".{LAST_CHECKPOINT}.tmp")
    temporary.unlink(missing_ok=True)
    os.symlink(checkpoint.name, temporary)
    os.replace(temporary, last)


def build_trainer(config: Config, devices: DeviceSpec, paths: RunPaths, has_validation: bool,
                  progress_bar: bool = True, stop: StopSignals | None = None) -> pl.Trainer:
    """A Trainer that checkpoints, validates and logs as ``config.train`` says; with ``stop``, it
    ends at a step boundary with a checkpoint on SIGTERM, Ctrl-C or SLURM's requeue signal."""
    train = config.train
    periodic = StepCheckpoints(paths, train.checkpoint_every_n_steps, train.keep_checkpoints)
    stopping = [StopCheckpoint(stop, periodic.save_step, paths.next_hpc_checkpoint)] if stop is not None else []
    strategy = DDPStrategy(find_unused_parameters=False) if devices.world_size > 1 else "auto"
    return pl.Trainer(
        accelerator=devices.accelerator, devices=devices.devices, num_nodes=devices.num_nodes, strategy=strategy,
        precision=train.precision, max_steps=train.max_steps,
        accumulate_grad_batches=train.accumulate_grad_batches, gradient_clip_val=train.max_grad_norm,
        val_check_interval=train.val_every_n_steps * train.accumulate_grad_batches,
        check_val_every_n_epoch=None, limit_val_batches=1.0 if has_validation else 0,
        num_sanity_val_steps=0, log_every_n_steps=train.log_every_n_steps,
        logger=[TensorBoardLogger(paths.logs, name="tensorboard"), CSVLogger(paths.logs, name="csv")],
        callbacks=[periodic, *stopping, FinalCheckpoint(paths, train.checkpoint_every_n_steps),
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
                 components: SDComponents | None = None, progress_bar: bool = True,
                 stop: StopSignals | None = None) -> TrainResult:
    """Train, checkpoint and export; every rank calls this (DDP re-runs the script per rank).
    With ``stop`` (``train.py``'s ``StopSignals``) a signal ends it with ``TrainingStopped``."""
    paths = RunPaths(Path(config.train.output_dir))
    resume_path = resolve_resume(resume, paths)
    datamodule = DecoderDataModule(config)
    if is_global_zero():
        with atomic_path(paths.config) as temporary:
            save_config(config, temporary)
        print(f"run folder {paths.root}: {devices.world_size} process(es) x batch {config.train.batch_size} "
              f"x accumulation {config.train.accumulate_grad_batches} = "
              f"{devices.world_size * config.train.batch_size * config.train.accumulate_grad_batches} "
              f"images per step" + (f"; resuming from {resume_path}" if resume_path else ""))
    module = ControlNetModule(config, components, datamodule.options.label_set)
    trainer = build_trainer(config, devices, paths, datamodule.val_dataset is not None, progress_bar, stop)
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")  # frozen SD1.5
    if resume_path is not None:
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    fit(trainer, module, datamodule, resume_path, paths)
    if not trainer.is_global_zero:
        return TrainResult(trainer.global_step, None, None, False)
    with destination_errors(paths.controlnet):
        export_dir = module.export(paths.controlnet)
    return TrainResult(trainer.global_step, newest_checkpoint(paths.checkpoints), export_dir, True)


def fit(trainer: pl.Trainer, module: ControlNetModule, datamodule: DecoderDataModule, resume_path: Path | None,
        paths: RunPaths) -> None:
    """``trainer.fit``, with what ends it early in this project's terms: ``TrainingStopped``,
    ``JobInterrupted``, or ``OutputError`` for a write the run folder refused (a full disk)."""
    stopper = next((callback for callback in trainer.callbacks if isinstance(callback, StopCheckpoint)), None)
    children = set(multiprocessing.active_children())
    try:
        with destination_errors(paths.root, WRITE_ERRNOS, messages=False):
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path, weights_only=True)
    except TrainingStopped:
        if stopper is not None:
            stopper.outlive_launcher()
        raise
    except SIGTERMException:  # Lightning's handler took the signal in the moment before ours replaced it
        raise JobInterrupted(signal.SIGTERM) from None
    finally:
        if stopper is not None:
            stopper.restore()
        end_data_workers(set(multiprocessing.active_children()) - children)
