"""Fault injection for the scripts' tests: a small file system that fills up, a read-only folder,
a script started in the background and stopped by a signal once it has written something."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO


@contextlib.contextmanager
def small_file_system(folder: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. "2m") at ``folder`` for the block; skips the test where
    mounting is not allowed (only root may)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill_file_system(filler: Path) -> Path:
    """Take every free byte of ``filler``'s file system (as another job would) with that file;
    delete it to free the space again."""
    with open(filler, "wb", buffering=0) as handle, pytest.raises(OSError) as full:
        while True:
            handle.write(bytes(65536))
    assert full.value.errno == errno.ENOSPC, full.value
    return filler


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """``folder`` (with what it holds) read-only for the block: a read-only bind mount as root
    (root writes through permission bits), ``chmod`` otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in [folder, *folder.rglob("*")] if path.is_dir()}
        for path in modes:
            path.chmod(0o555)
        try:
            yield folder
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True).returncode:
        pytest.skip("cannot make a read-only bind mount here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def start_script(script: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    """A top-level script (or ``-m module``) started in the background, in its own process group."""
    command = [sys.executable, *(["-m", script[3:]] if script.startswith("-m ") else [str(REPO / script)])]
    return subprocess.Popen([*command, *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                            start_new_session=True)


def wait_until(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 300) -> None:
    """Poll ``condition`` until it holds; fails if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the script ended (status {process.returncode}) before the condition held:\n"
                                 f"{out[-2000:]}\n{err[-4000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the script")
        time.sleep(0.05)


def stop(process: subprocess.Popen, signum: int = signal.SIGTERM, group: bool = False,
         timeout: float = 300) -> tuple[int, str, str]:
    """Send ``signum`` (to the process, or to its whole group as a terminal or SLURM does) and wait:
    the exit status, stdout and stderr."""
    if group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"the script did not stop within {timeout} s of {signal.Signals(signum).name}:\n"
                             f"{err[-4000:]}") from None
    return process.returncode, out, err


def count_files(folder: Path, pattern: str) -> int:
    """How many files under ``folder`` match ``pattern`` (recursively; 0 if it does not exist)."""
    return sum(1 for _ in folder.rglob(pattern)) if folder.is_dir() else 0


def tree_bytes(folder: Path, ignore: Callable[[Path], bool] = lambda path: False) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes (for byte-identical checks)."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and not ignore(path)}


def error_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that start with ``error:``."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]
