"""Compressing a folder with classic codecs at a target size: plan, run, resume, report.

Layout written under the output folder, for every input image ``<rel>/<stem>.<ext>``:

- ``<codec>/<rel>/<stem>.<codec extension>``: the compressed file (its size is the rate);
- ``<codec>_decoded/<rel>/<stem>.png``: that file decoded, at the input's size, for evaluation;
- ``results.csv``: one row per image and codec: image, codec, quality, bytes, bpp, scale, fits;
- ``compress_settings.json``: the target and options, so that a re-run resumes only the same job.

Every file is written atomically and ``results.csv`` is rewritten after each image, so an
interrupted run loses at most the images in flight; a re-run skips every (image, codec) that
has its row and its files. With ``--workers`` the images go to a process pool whose workers leave
SIGTERM and Ctrl-C to the parent and end when it dies, even by SIGKILL. An input that changed
between planning and reading (size or modification time) is a failure of that image, not a mix
of two versions.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from models.baselines.codecs import compress_to_size, decode, get_codec
from models.imageio import (CHANGED_SINCE_PLANNED, ImageReadError, atomic_save_image, atomic_write_bytes,
                            atomic_write_json, file_fingerprint, read_json, read_rgb)
from models.jobcontrol import STOP_SIGNALS, JobInterrupted, StopSignals, ignore_stop_signals
from models.layout import IMAGE_OUTPUT_SUFFIX, StemIndex, bitstream_index, list_inputs, output_relpath, stem_key
from models.rate import bits_per_pixel

RESULTS_FILE = "results.csv"
SETTINGS_FILE = "compress_settings.json"
COLUMNS = ("image", "codec", "quality", "bytes", "bpp", "scale", "fits")
QUEUED_PER_POOL = 1  # images handed to the pool beyond one per worker: keeps workers busy, few to cancel
PARENT_POLL_SECONDS = 0.2  # how often a pool worker checks that its parent is alive


@dataclass(frozen=True)
class Target:
    """How many bytes each image may take: one of a fixed size, a bit rate, or matched files."""

    kilobytes: float | None = None  # 1 KB = 1024 bytes
    bpp: float | None = None  # bits per pixel of the input image
    match_dir: str | None = None  # per image, the size of the file with the same key there
    match_suffix: str | None = None  # only files with this suffix count in match_dir

    def describe(self) -> dict:
        """The settings that define this target (stored with the results)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class CompressPlan:
    """What a run will do, decided before any work starts."""

    todo: list[tuple[str, Path, list[str]]] = field(default_factory=list)  # relpath, path, codecs
    fingerprints: dict[str, str] = field(default_factory=dict)  # relpath -> its version when planned (todo only)
    done: int = 0  # (image, codec) results already present
    ignored: list[str] = field(default_factory=list)  # not image files
    failures: dict[str, str] = field(default_factory=dict)  # relpath -> reason


def output_paths(output_dir: Path, relpath: str, codec: str) -> tuple[Path, Path]:
    """Where the compressed file and its decoded PNG for ``relpath`` go."""
    return (output_dir / codec / output_relpath(relpath, get_codec(codec).extension),
            output_dir / f"{codec}_decoded" / output_relpath(relpath, IMAGE_OUTPUT_SUFFIX))


def read_results(output_dir: Path) -> dict[tuple[str, str], dict]:
    """The rows of ``results.csv`` by (image, codec); empty when there is none."""
    path = output_dir / RESULTS_FILE
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {(row["image"], row["codec"]): row for row in csv.DictReader(handle)}


def write_results(output_dir: Path, rows: dict[tuple[str, str], dict]) -> None:
    """Rewrite ``results.csv`` atomically, sorted by image then codec."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for key in sorted(rows):
        writer.writerow({column: rows[key][column] for column in COLUMNS})
    atomic_write_bytes(output_dir / RESULTS_FILE, text.getvalue().encode("utf-8"))


def check_settings(output_dir: Path, settings: dict, overwrite: bool) -> None:
    """Refuse to resume a folder that holds results of a different target or options."""
    previous = read_json(output_dir / SETTINGS_FILE)
    if previous is not None and previous != settings and not overwrite:
        raise ValueError(
            f"{output_dir} holds results for {previous}, not {settings}; choose another "
            f"--output-dir or pass --overwrite")
    if previous != settings:
        (output_dir / RESULTS_FILE).unlink(missing_ok=True)  # rows of another target are void
        atomic_write_json(output_dir / SETTINGS_FILE, settings)


def plan_compress(input_dir: Path, output_dir: Path, codecs: list[str],
                  overwrite: bool = False) -> CompressPlan:
    """Sort the inputs into work to do, work done, ignored files and failures."""
    listing = list_inputs(input_dir)
    plan = CompressPlan(ignored=listing.ignored)
    for relpath, other in listing.clashes.items():
        plan.failures[relpath] = (f"same name as {other} up to the extension, so their outputs would collide; "
                                  f"rename one of them")
    rows = {} if overwrite else read_results(output_dir)
    for item in listing.files:
        todo = [codec for codec in codecs if not _is_done(rows, output_dir, item.relpath, codec)]
        plan.done += len(codecs) - len(todo)
        if not todo:
            continue
        try:
            plan.fingerprints[item.relpath] = file_fingerprint(item.path)
        except OSError as error:
            plan.failures[item.relpath] = f"cannot read it ({error.strerror})"
            continue
        plan.todo.append((item.relpath, item.path, todo))
    return plan


def _is_done(rows: dict, output_dir: Path, relpath: str, codec: str) -> bool:
    return (relpath, codec) in rows and all(p.exists() for p in output_paths(output_dir, relpath, codec))


def target_bytes(target: Target, relpath: str, size: tuple[int, int],
                 match_index: StemIndex | None = None) -> int:
    """The byte budget of one image of ``size`` (width, height)."""
    if target.kilobytes is not None:
        return math.floor(target.kilobytes * 1024)
    if target.bpp is not None:
        return math.floor(target.bpp * size[0] * size[1] / 8)
    key = stem_key(relpath)
    if key in match_index.ambiguous:
        raise ValueError(f"several files named {key}.* in {target.match_dir} "
                         f"({', '.join(match_index.ambiguous[key])}); pick one with --match-suffix")
    if key not in match_index:
        raise ValueError(f"no file {key}.* in {target.match_dir} to match the size of")
    return match_index.files[key].stat().st_size


@dataclass
class ImageJob:
    """One input image and the codecs still to run on it."""

    relpath: str
    path: Path
    codecs: list[str]
    target: Target
    allow_downscale: bool
    output_dir: Path
    max_pixels: int | None
    match_index: StemIndex | None = None  # files whose sizes are the budgets
    fingerprint: str | None = None  # the input's version when the run was planned (None: not checked)


def compress_one(job: ImageJob) -> tuple[str, list[dict] | str]:
    """Run every codec of ``job``, writing its files; the result rows, or the reason it failed. An
    input whose version differs from ``job.fingerprint`` after it was read fails, with nothing written."""
    try:
        image = read_rgb(job.path, job.max_pixels)
        if job.fingerprint is not None and file_fingerprint(job.path) != job.fingerprint:
            return job.relpath, CHANGED_SINCE_PLANNED
        budget = target_bytes(job.target, job.relpath, image.size, job.match_index)
    except (ImageReadError, ValueError) as error:
        return job.relpath, getattr(error, "reason", str(error))
    except OSError as error:  # gone since it was read
        return job.relpath, f"cannot read it any more ({error.strerror})"
    rows = []
    for codec in job.codecs:
        result = compress_to_size(image, codec, budget, allow_downscale=job.allow_downscale)
        compressed_path, decoded_path = output_paths(job.output_dir, job.relpath, codec)
        atomic_write_bytes(compressed_path, result.data)
        atomic_save_image(decode(result.data, image.size), decoded_path)
        rows.append({
            "image": job.relpath, "codec": codec, "quality": result.quality,
            "bytes": result.num_bytes, "bpp": f"{bits_per_pixel(result.num_bytes, *image.size):.6f}",
            "scale": f"{result.scale:.6f}", "fits": str(result.fits).lower(),
            "budget": budget,
        })
    return job.relpath, rows


def _start_worker() -> None:
    """Pool workers leave SIGTERM and Ctrl-C to their parent, which decides when to stop, and end
    when it dies however it dies (its pid as parent changes)."""
    ignore_stop_signals()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked while the parent started us
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """A worker started in the block does not see SIGTERM or SIGINT until ``_start_worker`` ignores them."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _run_jobs(jobs: list[ImageJob], workers: int) -> Iterator[tuple[str, list[dict] | str]]:
    """``compress_one`` of every job: in this process, or in a pool in the order they finish."""
    if workers <= 1:
        yield from map(compress_one, jobs)
        return
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_start_worker)
    try:
        yield from _pool_outcomes(pool, jobs, workers + QUEUED_PER_POOL)
    except JobInterrupted:  # a second signal: stop at once, the files being written are discarded
        _kill_workers()
        raise
    finally:
        try:  # the images not started are dropped, those running finish (their files are whole)
            pool.shutdown(wait=True, cancel_futures=True)
        except JobInterrupted:
            _kill_workers()
            raise


def _pool_outcomes(pool: ProcessPoolExecutor, jobs: list[ImageJob],
                   in_flight: int) -> Iterator[tuple[str, list[dict] | str]]:
    """Keep ``in_flight`` jobs in ``pool``; yield each outcome as it comes (an ``OutputError`` raises)."""
    pending, running = iter(jobs), set()
    while True:
        for job in pending:
            with _stop_signals_blocked():
                running.add(pool.submit(compress_one, job))
            if len(running) >= in_flight:
                break
        if not running:
            return
        finished, running = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            yield future.result()  # a worker's OutputError raises here


def _kill_workers() -> None:
    """Stop the pool's workers mid-image (the executor has no public way to stop running work;
    they are this process's only children)."""
    for process in multiprocessing.active_children():
        process.kill()


@dataclass
class CompressResult:
    """What a run did."""

    written: int = 0  # (image, codec) results written in this run
    failures: dict[str, str] = field(default_factory=dict)
    over_budget: list[dict] = field(default_factory=list)  # rows with fits == false (this run)


def run_compress(plan: CompressPlan, output_dir: Path, target: Target, allow_downscale: bool = False,
                 workers: int = 1, max_pixels: int | None = None, progress_bar: bool = True,
                 stop: StopSignals | None = None) -> CompressResult:
    """Compress ``plan.todo``; ``results.csv`` is brought up to date after every image. With
    ``stop``, a signal ends the run once the image just finished is recorded (``JobInterrupted``,
    whose ``kept`` is the number of results this run wrote)."""
    match_index = bitstream_index(target.match_dir, target.match_suffix) if target.match_dir else None
    rows = read_results(output_dir)
    jobs = [ImageJob(relpath, path, codecs, target, allow_downscale, output_dir, max_pixels, match_index,
                     plan.fingerprints.get(relpath)) for relpath, path, codecs in plan.todo]
    result = CompressResult(failures=dict(plan.failures))
    try:
        with contextlib.closing(_run_jobs(jobs, workers)) as outcomes, \
                tqdm(total=len(jobs), desc="compress", unit="image", disable=not progress_bar) as bar:
            for relpath, outcome in outcomes:
                _record(result, rows, relpath, outcome, output_dir)
                bar.update()
                if stop is not None:
                    stop.check()
    except JobInterrupted as error:
        error.kept = result.written
        raise
    return result


def _record(result: CompressResult, rows: dict, relpath: str, outcome: list[dict] | str, output_dir: Path) -> None:
    """Add one image's outcome to ``result`` and its rows to ``results.csv``."""
    if isinstance(outcome, str):
        result.failures[relpath] = outcome
        return
    for row in outcome:
        rows[(row["image"], row["codec"])] = row
        if row["fits"] == "false":
            result.over_budget.append(row)
    write_results(output_dir, rows)
    result.written += len(outcome)


def report(plan: CompressPlan, result: CompressResult, output_dir: Path) -> int:
    """One line per failed file or image over budget, a summary; the exit status (1 on failures)."""
    for relpath in sorted(result.failures):
        print(f"error: {relpath}: {result.failures[relpath]}", file=sys.stderr)
    for relpath in plan.ignored:
        print(f"skipped: {relpath}: not an image file (by its extension)", file=sys.stderr)
    for row in result.over_budget:
        print(f"over budget: {row['image']}: {row['codec']}: the smallest file it can make has "
              f"{row['bytes']} bytes, the budget is {row['budget']}; kept with fits=false",
              file=sys.stderr)
    over = sum(row["fits"] == "false" for row in read_results(output_dir).values())
    print(f"compressed {result.written}, already done {plan.done}, over budget {over} (all runs), "
          f"failed {len(result.failures)}, ignored {len(plan.ignored)} -> {output_dir / RESULTS_FILE}")
    return 1 if result.failures else 0
