"""Devices, processes and precision: where a job runs, with Lightning doing the work.

Scripts accept the original project's ``--gpus 0 1`` / ``--gpu_ids "0,1"``, a single
``--device`` (``cpu``, ``cuda``, ``cuda:1``) and Lightning's ``--accelerator``/``--devices``/
``--num_nodes`` (declared in ``models.cli``). They all resolve to one ``DeviceSpec``; more than
one device means DDP, where Lightning starts one process per device by running the same script
again.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from pytorch_lightning.callbacks import BasePredictionWriter, Callback

from models.config import PRECISION_NAMES
from models.jobcontrol import STOP_SIGNALS, JobInterrupted, StopSignals

PRECISIONS = dict(zip(PRECISION_NAMES, (torch.float32, torch.float16, torch.bfloat16)))  # name -> dtype


def network_dtype(precision: str, device: str | torch.device) -> torch.dtype:
    """The dtype a network runs in: ``precision`` (a config name) on a GPU, float32 on the CPU."""
    return PRECISIONS[precision] if torch.device(device).type == "cuda" else torch.float32


@dataclass(frozen=True)
class DeviceSpec:
    """Where a job runs, in Lightning's terms."""

    accelerator: str  # "cpu" or "gpu"
    devices: int | list[int]  # a count, or explicit GPU indices
    num_nodes: int = 1

    @property
    def world_size(self) -> int:
        count = len(self.devices) if isinstance(self.devices, list) else self.devices
        return count * self.num_nodes

    @property
    def strategy(self) -> str:
        return "ddp" if self.world_size > 1 else "auto"


def resolve_devices(args: argparse.Namespace) -> DeviceSpec:
    """Turn the device flags into a ``DeviceSpec``; contradictory flags raise ``ValueError``."""
    gpu_ids = _gpu_ids(args)
    accelerator = {"cuda": "gpu"}.get(args.accelerator, args.accelerator)
    if gpu_ids is not None:
        if accelerator == "cpu" or (args.device or "").startswith("cpu"):
            raise ValueError("GPU indices were given together with a CPU device; choose one")
        return DeviceSpec("gpu", gpu_ids, args.num_nodes)
    if args.device is not None:
        device = torch.device(args.device)
        if device.type == "cpu":
            return DeviceSpec("cpu", 1, args.num_nodes)
        if device.type != "cuda":
            raise ValueError(f"unsupported --device {args.device!r}: use cpu, cuda or cuda:N")
        return DeviceSpec("gpu", [device.index or 0], args.num_nodes)
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError("a GPU was requested but CUDA is not available; use --accelerator cpu")
    return DeviceSpec(accelerator, args.devices or 1, args.num_nodes)


def _gpu_ids(args: argparse.Namespace) -> list[int] | None:
    if getattr(args, "gpus", None):
        return list(args.gpus)
    text = getattr(args, "gpu_ids", None)
    if text:
        try:
            return [int(part) for part in text.replace(" ", "").split(",") if part]
        except ValueError:
            raise ValueError(f'--gpu_ids must look like "0,1", got {text!r}') from None
    return None


def is_global_zero() -> bool:
    """Whether this process is rank 0 (also before Lightning has set up the process group)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def prediction_trainer(devices: DeviceSpec, callbacks: list, progress_bar: bool = True,
                       stop: StopSignals | None = None):
    """A Lightning Trainer that runs ``predict`` on every device, each item exactly once; with
    ``stop``, a SIGTERM or Ctrl-C ends it between batches (``StopBetweenBatches``)."""
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator=devices.accelerator, devices=devices.devices, num_nodes=devices.num_nodes,
        strategy=devices.strategy, logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=progress_bar,
        callbacks=[*callbacks, StopBetweenBatches(stop)] if stop is not None else callbacks,
    )


def signal_launched_processes(trainer, signum: int) -> None:
    """Send ``signum`` to the processes that Lightning's launcher started from this one (the other
    ranks on this machine under DDP), which a signal sent only to this process does not reach."""
    launcher = trainer.strategy.launcher if trainer is not None else None
    if launcher is not None and getattr(launcher, "procs", None):
        launcher.kill(signum)


class StopBetweenBatches(Callback):
    """Ends a prediction job at the first batch boundary after SIGTERM or SIGINT: the batch in
    flight is finished and written (this callback comes after the writer), then ``JobInterrupted``
    leaves ``trainer.predict``. Lightning's own SIGTERM handler only sets a flag that prediction
    never reads (and, under DDP, broadcasts from inside the handler, which prediction's uneven
    batches do not match), so ours replaces it for the run; rank 0 passes the signal on to the
    processes it started. On any exception rank 0 stops those processes too, so that none waits
    for it in a collective."""

    def __init__(self, stop: StopSignals):
        self.stop = stop
        self.trainer = None

    def on_predict_start(self, trainer, pl_module) -> None:
        self.trainer = trainer
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, self.handle)

    def handle(self, signum: int, frame) -> None:
        first = not self.stop.requested
        if first:
            signal_launched_processes(self.trainer, signum)
        self.stop.handle(signum, frame)

    def on_predict_batch_end(self, trainer, *args, **kwargs) -> None:
        self.stop.check()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, JobInterrupted):
            signal_launched_processes(trainer, signal.SIGTERM)


@dataclass
class JobResult:
    """What all processes of a prediction job did, known on every process."""

    written: int  # inputs whose outputs this run wrote
    failures: dict[str, str]  # relpath -> reason
    is_global_zero: bool


class OutputWriter(BasePredictionWriter):
    """Writes a prediction job's outputs after each batch (``write_on_batch_end``), counting them
    and the failures of this process in ``written`` and ``failures``."""

    def __init__(self, output_dir: Path):
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.failures: dict[str, str] = {}
        self.written = 0

    def result(self, trainer) -> JobResult:
        """Every process's counts and failures (call it on every process: it gathers)."""
        parts = [(self.written, self.failures)]
        if trainer.world_size > 1:
            parts = [None] * trainer.world_size
            torch.distributed.all_gather_object(parts, (self.written, self.failures))
        failures = {relpath: reason for _, part in parts for relpath, reason in part.items()}
        return JobResult(sum(count for count, _ in parts), failures, trainer.is_global_zero)


def print_job_report(verb: str, processed: int, done: int, failures: dict[str, str], ignored: list[str],
                     ignored_reason: str, output_dir, warnings: list[str] = ()) -> int:
    """One line per failed, skipped or warned-about file, then a summary; 1 if anything failed."""
    for relpath in sorted(failures):
        print(f"error: {relpath}: {failures[relpath]}", file=sys.stderr)
    for relpath in ignored:
        print(f"skipped: {relpath}: {ignored_reason}", file=sys.stderr)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{verb} {processed}, already done {done}, failed {len(failures)}, "
          f"ignored {len(ignored)} -> {output_dir}")
    return 1 if failures else 0


def library_versions(*modules: str) -> dict[str, str | None]:
    """Python's version and the ``__version__`` of each named module (None where it is not
    installed): what run records (training.json, decode manifests, benchmark tables) note."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in modules:
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            versions[name] = None
    return versions
