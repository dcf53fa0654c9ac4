"""What every script does to survive a cluster: exit statuses, stopping on SIGTERM and Ctrl-C,
checking and locking its output folder. Nothing here imports torch (``compress_images.py`` uses it).

A script runs its job as::

    with StopSignals() as stop:                          # SIGTERM / SIGINT: stop at the next safe point
        with guarded_output(path, 8 * MiB) as folder:    # writable, room for a batch, locked, no leftovers
            ... load models; stop.check() between batches ...

and turns what comes out into one ``error:`` line and an ``ExitStatus`` (``exit_status_of``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from enum import IntEnum
from pathlib import Path

from models.imageio import OutputError, output_errors, remove_partial_writes

MiB = 2**20
LOCK_FILE = ".run.lock"  # in each output folder, while a run writes there
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ExitStatus(IntEnum):
    """The exit status of every script (README, "Exit statuses")."""

    OK = 0
    FAILED = 1  # some inputs failed (one line each); the others were done
    USAGE = 2  # bad flags, config, model files or input folder: nothing was done
    OVER_BUDGET = 3  # process_input.py: files over their byte budget even at the coarsest grid
    OUTPUT = 4  # the output folder cannot be written: read-only, full disk, no permission
    BUSY = 5  # another run holds the output folder
    # interrupted: 128 + the signal's number, as a shell reports it (130 Ctrl-C, 143 SIGTERM)


class JobInterrupted(Exception):
    """The job stopped because of a signal; outputs written so far are complete and kept."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.kept: int | None = None  # outputs this process wrote before it stopped, when the job counts them

    @property
    def status(self) -> int:
        return 128 + self.signum


class OutputBusy(Exception):
    """Another run writes into the output folder."""


class StopSignals:
    """Within the block, SIGTERM and SIGINT ask the job to stop at its next safe point (``check``,
    between batches): the work in flight is finished and kept. A second signal stops at once
    (``JobInterrupted`` from wherever the main thread is; files being written are discarded).
    Outside the main thread (a server's worker) it installs nothing."""

    def __init__(self, quiet: bool = False, immediate: bool = False):
        self.signum: int | None = None
        self.quiet = quiet  # other ranks: the first process tells the user
        self.immediate = immediate  # a job with nothing to keep mid-way stops on the first signal
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def handle(self, signum: int, frame=None) -> None:
        """The signal handler (also for Lightning to chain or for tests to call)."""
        if self.signum is not None or self.immediate:
            raise JobInterrupted(signum)
        self.signum = signum
        if not self.quiet:
            print(f"\n{signal.Signals(signum).name} received: stopping after the work in flight "
                  f"(send it again to stop at once)", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raise ``JobInterrupted`` if a stop was asked for."""
        if self.signum is not None:
            raise JobInterrupted(self.signum)


def prepare_output_folder(folder: str | os.PathLike, min_free_bytes: int) -> Path:
    """Create ``folder`` if needed and check, before any model loads, that files can be written
    there and that it has ``min_free_bytes`` free; ``OutputError`` naming the folder otherwise."""
    folder = Path(folder)
    with output_errors(folder):
        if folder.exists() and not folder.is_dir():
            raise OSError(errno.ENOTDIR, "a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{os.getpid()}.tmp"
        try:
            probe.write_bytes(b"x")
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
        free = shutil.disk_usage(folder).free
        if free < min_free_bytes:
            raise OSError(errno.ENOSPC, f"only {free / MiB:.1f} MiB free, a batch needs about "
                                        f"{min_free_bytes / MiB:.0f} MiB")
    return folder


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock_owner(path: Path) -> dict:
    """What a lock file says of its owner (empty when unreadable)."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict) -> str:
    return f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, since {owner.get('started', '?')}"


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, hold: bool = True) -> Iterator[None]:
    """Hold ``<folder>/.run.lock`` for the block: a second run into the same folder raises
    ``OutputBusy`` naming the owner's host and pid. The lock is an ``flock`` on the file, which the
    system releases when its process dies however it dies, so a stale lock is taken over (with a
    note); the file records host, pid, start and command for people. ``hold=False`` (the other
    ranks of a distributed job, which run under their rank 0's lock) does nothing."""
    if not hold:
        yield
        return
    path = Path(folder) / LOCK_FILE
    descriptor = _acquire(path)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(descriptor)


def _acquire(path: Path) -> int:
    """The descriptor of ``path`` locked by this process (see ``output_lock``)."""
    for _ in range(10):
        with output_errors(path):
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise OutputBusy(f"{path.parent} is in use by another run ({_describe(read_lock_owner(path))}); "
                             f"wait for it to end, or choose another output folder") from None
        except OSError as error:  # a file system without flock: trust the recorded owner
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(descriptor)
                raise
            owner = read_lock_owner(path)
            if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) \
                    and owner["pid"] != os.getpid() and _process_alive(owner["pid"]):
                os.close(descriptor)
                raise OutputBusy(f"{path.parent} is in use by another run ({_describe(owner)})") from None
        try:
            same_file = os.fstat(descriptor).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # its owner removed it between our open and lock
            same_file = False
        if not same_file:
            os.close(descriptor)
            continue
        previous = read_lock_owner(path)
        if previous:
            print(f"note: {path.parent}: taking over the lock of a run that ended without releasing it "
                  f"({_describe(previous)})", file=sys.stderr)
        record = {"host": socket.gethostname(), "pid": os.getpid(), "command": " ".join(sys.argv),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with output_errors(path):
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, (json.dumps(record) + "\n").encode("utf-8"), 0)
        return descriptor
    raise OutputBusy(f"{path.parent}: could not take {LOCK_FILE}; other runs keep replacing it")


def error_line(error: BaseException, resume: str = "run the same command again to resume") -> str:
    """The one line a script prints for an error that stops it."""
    if isinstance(error, OutputError):
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            advice = f"free some space, then {resume}"
        elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            advice = "make it writable or choose another output folder"
        else:
            advice = "choose another output folder"
        return f"error: {error}; {advice}"
    return f"error: {error}"


def interrupted_line(error: JobInterrupted, done: str, resume: str = "run the same command again to resume") -> str:
    """The one line a script prints when a signal stopped it; ``done`` says what was kept."""
    return f"interrupted ({error}): {done}; {resume}"


def stopped_line(error: BaseException, verb: str, resume: str = "run the same command again to resume") -> str:
    """The line for a job that a signal (``JobInterrupted``, with what it ``kept``) or its output
    folder (``OutputError``, ``OutputBusy``) stopped; ``verb``: what the job does to an image."""
    if not isinstance(error, JobInterrupted):
        return error_line(error, resume)
    done = (f"no image was {verb} yet" if error.kept is None
            else f"what was written is kept ({error.kept} image(s) {verb} by this process)")
    return interrupted_line(error, done, resume)


def ignore_stop_signals(*_) -> None:
    """For worker processes (data loaders, pools): the main process decides when to stop, so a
    Ctrl-C or a SLURM signal sent to the whole process group (SIGTERM, and SIGUSR1 of
    ``#SBATCH --signal``) does not kill a worker mid-item, which would end the job at once."""
    for signum in (*STOP_SIGNALS, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def guarded_output(folder: str | os.PathLike, min_free_bytes: int, hold: bool = True) -> Iterator[Path]:
    """``prepare_output_folder``, ``output_lock`` for the block and ``remove_partial_writes``: what
    a job does with its output folder before any model loads. ``hold=False`` (ranks other than 0,
    which run under their rank 0's lock) only names the folder."""
    folder = Path(folder)
    if not hold:
        yield folder
        return
    prepare_output_folder(folder, min_free_bytes)
    with output_lock(folder):
        removed = remove_partial_writes(folder)
        if removed:
            print(f"removed {len(removed)} temporary file(s) of writes an earlier run did not finish",
                  file=sys.stderr)
        yield folder


def exit_status_of(error: BaseException) -> int:
    """The exit status for an error that stopped a job (``ExitStatus``, or 128 + signal)."""
    if isinstance(error, JobInterrupted):
        return error.status
    if isinstance(error, KeyboardInterrupt):
        return 128 + signal.SIGINT
    if isinstance(error, OutputBusy):
        return ExitStatus.BUSY
    if isinstance(error, OutputError):
        return ExitStatus.OUTPUT
    return ExitStatus.USAGE


__all__ = ["ExitStatus", "JobInterrupted", "LOCK_FILE", "MiB", "OutputBusy", "OutputError", "StopSignals",
           "error_line", "exit_status_of", "guarded_output", "ignore_stop_signals", "interrupted_line", "output_lock",
           "prepare_output_folder", "read_lock_owner", "stopped_line"]
