"""compress_images.py on a cluster: stopped by SIGTERM, Ctrl-C or SIGKILL, a disk that fills, a
read-only folder, two runs on one folder, leftovers of killed writes, inputs that change mid-run."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from PIL import Image, ImageOps

import compress_images
from models.baselines.job import Target, output_paths, plan_compress, read_results, run_compress
from models.imageio import OutputError
from models.jobcontrol import LOCK_FILE, read_lock_owner
from tests.conftest import VOC_IMAGES
from tests.faults import (error_lines, fill_file_system, read_only_folder, small_file_system, start_script, stop,
                          tree_bytes, wait_until)

CODECS = ("jpeg", "webp")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """28 small PNG photos (the 14 VOC samples at 240 pixels wide, and their mirror images): about
    two seconds of work for one process."""
    folder = tmp_path_factory.mktemp("photos")
    for path in sorted(VOC_IMAGES.glob("*.jpg")):
        image = Image.open(path).convert("RGB")
        image = image.resize((240, round(240 * image.height / image.width)), Image.Resampling.LANCZOS)
        image.save(folder / f"{path.stem}.png")
        ImageOps.mirror(image).save(folder / f"{path.stem}-mirrored.png")
    return folder


def flags(photos: Path, output: Path, *extra: str) -> list[str]:
    return ["--input-dir", str(photos), "--output-dir", str(output), "--target-bpp", "0.5",
            "--codecs", *CODECS, *extra]


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> dict[str, bytes]:
    """The files of an uninterrupted run."""
    output = tmp_path_factory.mktemp("reference") / "out"
    assert compress_images.main(flags(photos, output)) == 0
    return tree_bytes(output)


def has_results(output: Path) -> bool:
    path = output / "results.csv"
    return path.exists() and len(path.read_text().splitlines()) > 1


def live_processes(group: int) -> list[int]:
    """The processes of a process group that still run (zombies excluded)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def check_no_processes_left(group: int, seconds: float) -> None:
    """Within ``seconds`` no process of the group runs (those that still do are killed, then reported)."""
    deadline = time.monotonic() + seconds
    while live_processes(group) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = live_processes(group)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == []


def check_interrupted(status: int, err: str, expected: int) -> int:
    """One ``interrupted`` line, no traceback; the number of results it says were kept."""
    assert status == expected, err
    assert "Traceback" not in err and not error_lines(err)
    assert err.count("received: stopping") == 1, err  # told by the script, not by its workers
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1, err
    return int(re.search(r"(\d+) results written this run, kept", lines[0]).group(1))


def check_consistent(output: Path) -> dict:
    """Every row of results.csv has both its files; no temporary file is left. The rows."""
    rows = read_results(output)
    for image, codec in rows:
        assert all(path.is_file() for path in output_paths(output, image, codec))
    assert not list(output.rglob("*.tmp"))
    return rows


def test_sigterm_stops_after_the_image_in_flight_and_a_rerun_matches_an_uninterrupted_run(
        photos, reference, tmp_path, capsys):
    output = tmp_path / "out"
    process = start_script("compress_images.py", *flags(photos, output))
    wait_until(lambda: has_results(output), process)
    status, _, err = stop(process, signal.SIGTERM)
    kept = check_interrupted(status, err, 143)
    rows = check_consistent(output)
    assert 0 < kept == len(rows) < 2 * 28
    assert not (output / LOCK_FILE).exists()
    assert compress_images.main(flags(photos, output)) == 0
    assert f"compressed {2 * 28 - kept}, already done {kept}" in capsys.readouterr().out
    assert tree_bytes(output) == reference


def test_ctrl_c_to_the_group_with_workers_leaves_no_worker_and_a_rerun_matches(photos, reference, tmp_path):
    output = tmp_path / "out"
    process = start_script("compress_images.py", *flags(photos, output, "--workers", "2"))
    wait_until(lambda: has_results(output), process)
    assert len(live_processes(process.pid)) >= 3  # the script and its two workers
    status, _, err = stop(process, signal.SIGINT, group=True)
    kept = check_interrupted(status, err, 130)
    assert kept == len(check_consistent(output)) < 2 * 28
    check_no_processes_left(process.pid, 2)
    assert compress_images.main(flags(photos, output, "--workers", "2")) == 0
    assert tree_bytes(output) == reference


def test_a_second_ctrl_c_stops_at_once_and_drops_the_images_in_flight(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted(VOC_IMAGES.glob("*.jpg"))[:4]:
        shutil.copy(path, photos)
    output = tmp_path / "out"
    args = ["--input-dir", str(photos), "--output-dir", str(output), "--target-bpp", "0.5", "--codecs", "png",
            "--workers", "2"]  # PNG quantisation: over a second per photo
    process = start_script("compress_images.py", *args)
    wait_until(lambda: len(live_processes(process.pid)) >= 3, process)  # the workers started
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.1)
    started = time.monotonic()
    status, _, err = stop(process, signal.SIGINT, group=True)
    assert time.monotonic() - started < 1.0  # the workers were not waited for
    assert check_interrupted(status, err, 130) == 0
    assert check_consistent(output) == {} and not list((output / "png").rglob("*"))
    check_no_processes_left(process.pid, 2)
    assert compress_images.main(args) == 0
    assert len(check_consistent(output)) == 4


def test_sigkill_of_the_script_ends_its_workers_and_its_lock_is_taken_over(photos, reference, tmp_path, capsys):
    output = tmp_path / "out"
    process = start_script("compress_images.py", *flags(photos, output, "--workers", "2"))
    wait_until(lambda: has_results(output), process)
    workers = [pid for pid in live_processes(process.pid) if pid != process.pid]
    assert len(workers) >= 2
    process.kill()
    process.wait()
    process.stdout.close()  # not communicate(): a surviving worker would hold the pipes open
    process.stderr.close()
    check_no_processes_left(process.pid, 3)
    assert read_lock_owner(output / LOCK_FILE)["pid"] == process.pid  # left behind
    assert compress_images.main(flags(photos, output)) == 0
    err = capsys.readouterr().err
    assert "taking over the lock" in err and f"pid {process.pid}" in err
    assert tree_bytes(output) == reference


def test_a_full_disk_mid_run_is_one_error_line_and_a_rerun_after_freeing_space_completes(photos, reference, tmp_path):
    with small_file_system(tmp_path / "small", "20m") as mount:
        output = mount / "out"
        process = start_script("compress_images.py", *flags(photos, output, "--workers", "2"))
        wait_until(lambda: has_results(output), process)
        filler = fill_file_system(mount / "filler")
        _, err = process.communicate(timeout=60)
        assert process.returncode == 4, err
        assert "Traceback" not in err
        lines = error_lines(err)
        assert len(lines) == 1 and str(output) in lines[0] and "free some space" in lines[0], err
        check_consistent(output)
        filler.unlink()
        assert compress_images.main(flags(photos, output)) == 0
        assert tree_bytes(output) == reference


def test_a_read_only_output_folder_is_one_error_line_and_nothing_is_written(photos, tmp_path, capsys):
    output = tmp_path / "out"
    with read_only_folder(output):
        assert compress_images.main(flags(photos, output)) == 4
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(output) in lines[0]
    assert list(output.iterdir()) == []


def test_an_output_error_in_a_worker_reaches_the_script_as_output_error(photos, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    plan = plan_compress(photos, output, ["jpeg"])
    with read_only_folder(output), pytest.raises(OutputError) as caught:
        run_compress(plan, output, Target(bpp=0.5), workers=2, progress_bar=False)
    assert caught.value.errno in (errno.EROFS, errno.EACCES)
    assert Path(caught.value.filename).parent == output / "jpeg"  # a worker's file, not results.csv


def test_a_second_run_on_the_same_folder_is_refused_with_the_first_ones_pid(photos, tmp_path, capsys):
    output = tmp_path / "out"
    process = start_script("compress_images.py", *flags(photos, output))
    wait_until(lambda: read_lock_owner(output / LOCK_FILE).get("pid") == process.pid, process)
    assert compress_images.main(flags(photos, output)) == 5
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "in use by another run" in lines[0] and f"pid {process.pid}" in lines[0]
    status, _, err = stop(process, signal.SIGTERM)
    assert status == 143, err


def test_temporary_files_of_killed_writes_are_removed(photos, tmp_path, capsys):
    few = tmp_path / "photos"
    few.mkdir()
    for path in sorted(photos.glob("*.png"))[:2]:
        shutil.copy(path, few)
    output = tmp_path / "out"
    assert compress_images.main(flags(few, output)) == 0
    done = tree_bytes(output)
    planted = [output / "jpeg" / ".x.jpg.abc.jpg.tmp", output / "webp_decoded" / ".y.png.k2j3.png.tmp"]
    kept = [output / "jpeg" / "notes.tmp", output / ".hidden"]
    for path in planted + kept:
        path.write_bytes(b"partial")
    capsys.readouterr()
    assert compress_images.main(flags(few, output)) == 0
    assert "removed 2 temporary file(s)" in capsys.readouterr().err
    assert not any(path.exists() for path in planted) and all(path.exists() for path in kept)
    assert tree_bytes(output, ignore=lambda path: path in kept) == done


def test_an_input_changed_after_planning_fails_and_nothing_is_written_for_it(photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    names = sorted(path.name for path in photos.glob("*.png"))[:3]
    for name in names:
        shutil.copy(photos / name, folder)
    output = tmp_path / "out"
    plan = plan_compress(folder, output, ["jpeg"])
    resized, touched, unchanged = names
    Image.open(folder / resized).resize((200, 150)).save(folder / resized)  # other size
    stat = (folder / touched).stat()
    os.utime(folder / touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same size, later time
    result = run_compress(plan, output, Target(bpp=0.5), progress_bar=False)
    assert set(result.failures) == {resized, touched}
    assert all("changed since the run was planned" in reason for reason in result.failures.values())
    assert set(read_results(output)) == {(unchanged, "jpeg")}
    for name in (resized, touched):
        assert not any(path.exists() for path in output_paths(output, name, "jpeg"))
    plan = plan_compress(folder, output, ["jpeg"])
    assert [relpath for relpath, _, _ in plan.todo] == [resized, touched]
    assert run_compress(plan, output, Target(bpp=0.5), workers=2, progress_bar=False).failures == {}
    assert Image.open(output_paths(output, resized, "jpeg")[1]).size == (200, 150)
