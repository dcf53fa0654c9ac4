"""Stopping a training run cleanly: SIGTERM, Ctrl-C and SLURM's requeue signal end it at the end
of an optimizer step with that step saved (``StopCheckpoint``), and the line ``train.py`` prints.

The signal handlers only take note; the callback acts at a step boundary, where a checkpoint
holds what a periodic one does, so a resumed run ends bitwise where an uninterrupted one does.
Saving inside a signal handler (as Lightning's SLURM handler does) can catch a step half done or
an accumulation half summed, and under DDP enters collectives out of turn; Lightning's SIGTERM
handler ends a run with status 0 and no checkpoint (``SIGTERMException``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
from pytorch_lightning.callbacks import Checkpoint

from models.jobcontrol import STOP_SIGNALS, JobInterrupted, StopSignals, interrupted_line
from models.runtime import signal_launched_processes

REQUEUE_SIGNAL = signal.SIGUSR1  # what SLURM sends before the time limit with #SBATCH --signal=SIGUSR1@90
RESUME_ADVICE = "run the same command with --resume last (or auto)"


class TrainingStopped(JobInterrupted):
    """A signal ended training at the end of optimizer step ``step``, saved in ``checkpoint``;
    ``requeue`` says what became of the SLURM requeue it asked for, if it asked for one."""

    def __init__(self, signum: int, step: int, checkpoint: Path, requeue: str | None = None):
        super().__init__(signum)
        self.step, self.checkpoint, self.requeue = step, checkpoint, requeue


class StopCheckpoint(Checkpoint):
    """Ends training at the end of an optimizer step once a signal asks for it, with that step
    saved: SIGTERM or Ctrl-C save it as a periodic checkpoint would (``StepCheckpoints.save_step``);
    SLURM's requeue signal (``#SBATCH --signal=SIGUSR1@90``) saves Lightning's ``hpc_ckpt_K.ckpt``
    in the run folder and requeues the job (``scontrol requeue``). Then every rank raises
    ``TrainingStopped``; nothing is exported.

    Saved there, the checkpoint holds what a periodic one does, so a resumed run ends bitwise
    where an uninterrupted one does; saving inside a signal handler (Lightning's SLURM handler
    does) can catch a step half done or an accumulation half summed, and under DDP enters
    collectives out of turn. So the handlers only take note: ours replace Lightning's, whose
    SIGTERM handler broadcasts from inside the handler and then ends the run with a status of 0 and
    no checkpoint (``SIGTERMException``). The ranks agree at each step end: one rank's signal stops
    all. As a ``Checkpoint`` it runs after ``StepCheckpoints`` (Lightning runs those last, in order)."""

    def __init__(self, stop: StopSignals, save_step: Callable[[pl.Trainer], Path],
                 next_hpc_checkpoint: Callable[[], Path]):
        self.stop = stop
        self.save_step = save_step  # saves this step as the periodic checkpoints do; its path (every rank)
        self.next_hpc_checkpoint = next_hpc_checkpoint  # where Lightning's SLURM checkpoint goes
        self.requeue_signal = REQUEUE_SIGNAL if SLURMEnvironment.detect() else None
        self.requeue_requested = False
        self.trainer: pl.Trainer | None = None
        self.launcher_pid: int | None = None  # the process that started this one, when Lightning's launcher did
        self.last_step = 0
        self.saved = False  # the stop's checkpoint is written and the run is ending
        self.previous: dict[int, object] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.trainer = trainer
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if trainer.local_rank > 0 and type(environment) is LightningEnvironment:
            self.launcher_pid = os.getppid()
        self.install()  # before Lightning registers its handlers: it then keeps ours for SIGUSR1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.last_step = trainer.global_step
        self.install()  # over Lightning's SIGTERM handler, registered after setup

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            self.previous.setdefault(signum, signal.signal(signum, self.handle_stop))
        if self.requeue_signal is not None:
            self.previous.setdefault(self.requeue_signal, signal.signal(self.requeue_signal, self.handle_requeue))

    def restore(self) -> None:
        """Put back the handlers that were there before ``setup``; after a stop, keep ours (which
        then ignore signals) until the script restores its own at exit."""
        for signum, handler in self.previous.items() if not self.saved else ():
            signal.signal(signum, handler)
        self.previous = {}

    def handle_stop(self, signum: int, frame=None) -> None:
        """SIGTERM or SIGINT: rank 0 passes the first on to the processes it started (they may not
        have had it) and stops at once on a second one; the others never do, since a signal to the
        whole process group reaches them twice. Once the step is saved nothing is left to cut short:
        a signal then would only break off Lightning's teardown, which stops the data workers."""
        if self.saved:
            return
        first = not self.stop.requested
        if first or self.trainer is None or self.trainer.is_global_zero:
            self.stop.handle(signum, frame)
        if first:
            signal_launched_processes(self.trainer, signum)

    def handle_requeue(self, signum: int, frame=None) -> None:
        if not self.requeue_requested and self.trainer is not None and self.trainer.is_global_zero:
            print(f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step, then "
                  f"requeueing the SLURM job", file=sys.stderr, flush=True)
        self.requeue_requested = True


    def on_train_batch_end(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        if trainer.global_step == self.last_step:
            return  # a micro-batch within gradient accumulation: the step is not complete
        self.last_step = trainer.global_step
        requeue = trainer.strategy.reduce_boolean_decision(self.requeue_requested, all=False)
        stop = trainer.strategy.reduce_boolean_decision(self.stop.requested, all=False)
        if (requeue or stop) and trainer.global_step < trainer.max_steps:  # at the last step: finish
            stopped = self.save_and_requeue(trainer) if requeue else self.save_and_stop(trainer)
            self.saved = True
            raise stopped

    def save_and_stop(self, trainer: pl.Trainer) -> TrainingStopped:
        signum = trainer.strategy.broadcast(self.stop.signum, 0) or self.stop.signum or signal.SIGTERM
        return TrainingStopped(signum, trainer.global_step, self.save_step(trainer))

    def save_and_requeue(self, trainer: pl.Trainer) -> TrainingStopped:
        path = trainer.strategy.broadcast(self.next_hpc_checkpoint(), 0)
        trainer.save_checkpoint(path, weights_only=False)
        requeue = requeue_slurm_job() if trainer.is_global_zero else None
        return TrainingStopped(self.requeue_signal, trainer.global_step, path, requeue)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.is_global_zero and not isinstance(exception, TrainingStopped):
            self.end_children(trainer)

    @staticmethod
    def end_children(trainer: pl.Trainer) -> None:
        """Kill the processes this one started: they may wait for it in a collective. They leave
        the list that Lightning's process observer watches, which would otherwise kill this
        process (SIGKILL) for their status before it reports."""
        procs = getattr(trainer.strategy.launcher, "procs", [])
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
        procs.clear()

    def outlive_launcher(self, timeout: float = 60) -> None:
        """In a process that Lightning's launcher started: wait until that process (local rank 0)
        has ended, since its process observer kills it when a child ends first with a status other
        than 0."""
        deadline = time.monotonic() + timeout
        while self.launcher_pid is not None and os.getppid() == self.launcher_pid and time.monotonic() < deadline:
            time.sleep(0.05)


def requeue_slurm_job() -> str:
    """``scontrol requeue`` this job, as Lightning's SLURM handler does; what came of it, in words."""
    job = os.environ.get("SLURM_JOB_ID", "")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        failure = (done.stderr.strip() or f"status {done.returncode}") if done.returncode else None
    except (OSError, subprocess.TimeoutExpired) as error:
        failure = str(error)
    if failure:
        return f"scontrol requeue {job} failed ({failure}); {RESUME_ADVICE}"
    return f"SLURM job {job} requeued: it resumes from there with --resume auto"


def end_data_workers(workers: set) -> None:
    """Kill the data-loader workers still alive after ``fit``: Lightning's teardown stops them,
    but when a signal broke it off, Python's exit would send them SIGTERM, which they ignore
    (``ignore_stop_signals``), and wait for them forever."""
    if workers:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # PyTorch's handler would call their end a failure
    for worker in workers:
        worker.kill()
        worker.join()


def interrupted_report(error: JobInterrupted) -> str:
    """The line ``train.py`` prints when a signal stopped training: the step, its checkpoint, how to go on."""
    if isinstance(error, TrainingStopped):
        done = f"stopped after step {error.step}, saved in {error.checkpoint} (not exported)"
        return interrupted_line(error, done, error.requeue or RESUME_ADVICE)
    return interrupted_line(error, "stopped at once, in the middle of a step (not saved)", RESUME_ADVICE)
