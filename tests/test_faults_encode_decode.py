"""Fault injection for process_input.py and process_decoding.py (issue 25): SIGTERM and Ctrl-C
mid-run, a disk that fills, a read-only folder, two runs on one folder, a stale lock, an input
that changes between planning and reading. Each script runs in a fresh process, as on a cluster."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import process_decoding
import process_input
from models.imageio import CHANGED_SINCE_PLANNED
from models.jobcontrol import LOCK_FILE, ExitStatus
from tests.conftest import REPO, VOC_IMAGES
from tests.decode_fixtures import label_maps, trained_controlnet  # noqa: F401
from tests.faults import (count_files, error_lines, fill_file_system, read_only_folder, small_file_system,
                          start_script, stop, tree_bytes, wait_until)

COPIES = 3  # the 14 VOC photos three times over: a run long enough to be stopped part-way


def is_temporary(path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """42 photos (the VOC samples, each three times, downscaled to keep the run short)."""
    folder = tmp_path_factory.mktemp("photos")
    for copy in range(COPIES):
        for photo in sorted(VOC_IMAGES.glob("*.jpg")):
            image = Image.open(photo)
            image.thumbnail((160, 160))
            image.save(folder / f"{copy}_{photo.name}", quality=90)
    return folder


def encode_args(config, input_dir, output_dir, *extra):
    return ["--config_path", config, "--input_dir", input_dir, "--output_dir", output_dir, "--device", "cpu",
            "--batch_size", "1", *extra]


@pytest.fixture(scope="module")
def encoded(tiny_config, photos, tmp_path_factory):
    """What an uninterrupted run writes."""
    output_dir = tmp_path_factory.mktemp("straight") / "out"
    assert process_input.main(list(map(str, encode_args(tiny_config, photos, output_dir)))) == 0
    return output_dir


def test_sigterm_stops_encoding_after_the_batch_in_flight_and_a_rerun_completes_it(
        tiny_config, photos, encoded, tmp_path, capsys):
    output_dir = tmp_path / "out"
    process = start_script("process_input.py", *encode_args(tiny_config, photos, output_dir))
    wait_until(lambda: count_files(output_dir, "*.sem") >= 2, process)
    status, _, err = stop(process, signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "run the same command again to resume" in lines[0]
    written = sorted(p.name for p in output_dir.glob("*.sem"))
    assert 2 <= len(written) < COPIES * 14  # stopped part-way
    assert all((output_dir / name).read_bytes() == (encoded / name).read_bytes() for name in written)
    assert not (output_dir / LOCK_FILE).exists() and not any(map(is_temporary, output_dir.rglob("*")))

    assert process_input.main(list(map(str, encode_args(tiny_config, photos, output_dir)))) == 0
    assert f"already done {len(written)}," in capsys.readouterr().out
    assert tree_bytes(output_dir) == tree_bytes(encoded)  # byte for byte an uninterrupted run


def test_sigterm_to_the_first_of_two_processes_stops_both_without_a_hang(tiny_config, photos, encoded, tmp_path):
    """``timeout`` or a user's ``kill`` reaches rank 0 only; it passes the signal on to rank 1."""
    output_dir = tmp_path / "out"
    process = start_script("process_input.py", *encode_args(tiny_config, photos, output_dir, "--accelerator", "cpu",
                                                            "--devices", "2"))
    wait_until(lambda: count_files(output_dir, "*.sem") >= 2, process)
    status, _, err = stop(process, signal.SIGTERM, timeout=120)
    assert status == 128 + signal.SIGTERM and "Traceback" not in err, err[-3000:]
    survivors = subprocess.run(["pgrep", "-f", f"--output_dir {output_dir}"], capture_output=True, text=True)
    assert survivors.stdout == ""  # rank 1 ended too
    written = sorted(p.name for p in output_dir.glob("*.sem"))
    assert 2 <= len(written) < COPIES * 14
    assert all((output_dir / name).read_bytes() == (encoded / name).read_bytes() for name in written)


def test_a_disk_that_fills_mid_run_is_one_error_line_and_the_run_resumes(tiny_config, photos, encoded, tmp_path):
    with small_file_system(tmp_path / "small", "3m") as small:
        output_dir = small / "out"
        process = start_script("process_input.py", *encode_args(tiny_config, photos, output_dir))
        wait_until(lambda: count_files(output_dir, "*.sem") >= 1, process)
        filler = fill_file_system(small / "filler")
        out, err = process.communicate(timeout=300)
        assert process.returncode == ExitStatus.OUTPUT, err[-3000:]
        assert "Traceback" not in err
        [line] = error_lines(err)
        assert f"cannot write {output_dir}/" in line and "No space left on device" in line
        assert not any(map(is_temporary, output_dir.rglob("*")))
        filler.unlink()
        done = sorted(p.name for p in output_dir.glob("*.sem"))
        assert all((output_dir / name).read_bytes() == (encoded / name).read_bytes() for name in done)
        assert process_input.main(list(map(str, encode_args(tiny_config, photos, output_dir)))) == 0
        assert tree_bytes(output_dir) == tree_bytes(encoded)


def test_a_read_only_output_folder_is_refused_before_any_model_loads(tiny_config, photos, tmp_path, capsys):
    """The segmentation checkpoint does not exist: a run that loaded models would fail with 2."""
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    args = encode_args(tiny_config, photos, output_dir, "--segmentation_ckpt", tmp_path / "missing.pth")
    with read_only_folder(output_dir):
        assert process_input.main(list(map(str, args))) == ExitStatus.OUTPUT
    err = capsys.readouterr().err
    assert error_lines(err) == [f"error: cannot write {output_dir}: Read-only file system; "
                                f"make it writable or choose another output folder"]
    assert not any(output_dir.iterdir())


def test_a_second_run_on_the_same_folder_refuses_and_a_stale_lock_is_taken_over(
        tiny_config, photos, encoded, tmp_path, capsys):
    output_dir = tmp_path / "out"
    args = list(map(str, encode_args(tiny_config, photos, output_dir)))
    first = start_script("process_input.py", *args)
    wait_until(lambda: count_files(output_dir, "*.sem") >= 1, first)
    assert process_input.main(args) == ExitStatus.BUSY
    [line] = error_lines(capsys.readouterr().err)
    assert f"{output_dir} is in use by another run" in line and f"pid {first.pid}," in line
    first.kill()  # SIGKILL: the lock file stays behind, its flock dies with the process
    first.communicate()
    assert json.loads((output_dir / LOCK_FILE).read_text())["pid"] == first.pid
    assert process_input.main(args) == 0
    assert "taking over the lock of a run that ended without releasing it" in capsys.readouterr().err
    assert tree_bytes(output_dir) == tree_bytes(encoded)


def test_an_image_replaced_after_planning_is_reported_not_mixed(tiny_config, photos, tmp_path):
    from models.config import load_config
    from models.encode.job import OutputSpec, plan_encode, run_encode
    from models.runtime import DeviceSpec

    input_dir = tmp_path / "in"
    input_dir.mkdir()
    for photo in sorted(photos.glob("0_*.jpg"))[:3]:
        shutil.copy(photo, input_dir / photo.name)
    plan = plan_encode(input_dir, tmp_path / "out", outputs=OutputSpec("both"))
    changed = plan.todo[1]
    Image.open(plan.todo[0].path).save(changed.path)  # another photo under its name
    result = run_encode(plan, load_config(tiny_config), DeviceSpec("cpu", 1), tmp_path / "out",
                        progress_bar=False, outputs=OutputSpec("both"))
    assert result.failures == {changed.relpath: CHANGED_SINCE_PLANNED}
    assert result.written == 2 and not (tmp_path / "out" / changed.relpath).with_suffix(".sem").exists()


# --- decoding -------------------------------------------------------------------------------------

def decode_args(config, checkpoint, input_dir, output_dir, *extra):
    return list(map(str, ["--config_path", config, "--checkpoint_path", checkpoint, "--input_path", input_dir,
                          "--output_dir", output_dir, "--num_inference_steps", "2", "--batch_size", "1",
                          "--device", "cpu", *extra]))


@pytest.fixture(scope="module")
def decoded(tiny_config, trained_controlnet, label_maps, tmp_path_factory):  # noqa: F811
    output_dir = tmp_path_factory.mktemp("decoded") / "out"
    assert process_decoding.main(decode_args(tiny_config, trained_controlnet, label_maps, output_dir)) == 0
    return output_dir


@pytest.mark.parametrize("signum, group", [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["sigterm", "ctrl-c"])
def test_a_signal_stops_decoding_between_batches_and_skip_existing_completes_it(
        tiny_config, trained_controlnet, label_maps, decoded, tmp_path, signum, group):  # noqa: F811
    """SIGTERM as ``kill`` sends it; Ctrl-C as a terminal does, to the whole process group."""
    output_dir = tmp_path / "out"
    args = decode_args(tiny_config, trained_controlnet, label_maps, output_dir)
    process = start_script("process_decoding.py", *args)
    wait_until(lambda: count_files(output_dir, "*.png") >= 1, process)
    status, _, err = stop(process, signum, group=group)
    assert status == 128 + signum, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    [line] = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert signal.Signals(signum).name in line and "--skip_existing to resume" in line
    done = sorted(p.relative_to(output_dir) for p in output_dir.rglob("*.png"))
    assert 1 <= len(done) < 6 and all((output_dir / n).read_bytes() == (decoded / n).read_bytes() for n in done)
    resumed = subprocess.run([sys.executable, str(REPO / "process_decoding.py"), *args, "--skip_existing"],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"already done {len(done)}," in resumed.stdout
    ignore = {"manifest.json"}  # holds the software versions and is compared below without them
    assert tree_bytes(output_dir, lambda p: p.name in ignore) == tree_bytes(decoded, lambda p: p.name in ignore)
    manifests = [json.loads((folder / "manifest.json").read_text()) for folder in (output_dir, decoded)]
    assert manifests[0]["images"] == manifests[1]["images"]


def test_a_disk_that_fills_while_decoding_is_one_error_line_and_skip_existing_completes_it(
        tiny_config, trained_controlnet, label_maps, decoded, tmp_path):  # noqa: F811
    with small_file_system(tmp_path / "small", "6m") as small:
        output_dir = small / "out"
        args = decode_args(tiny_config, trained_controlnet, label_maps, output_dir)
        process = start_script("process_decoding.py", *args)
        wait_until(lambda: count_files(output_dir, "*.png") >= 1, process)
        filler = fill_file_system(small / "filler")
        _, err = process.communicate(timeout=300)
        assert process.returncode == ExitStatus.OUTPUT, err[-3000:]
        assert "Traceback" not in err
        [line] = error_lines(err)
        assert f"cannot write {output_dir}/" in line and "--skip_existing to resume" in line
        assert not any(map(is_temporary, output_dir.rglob("*")))
        filler.unlink()
        assert process_decoding.main(args + ["--skip_existing"]) == 0
        assert tree_bytes(output_dir, lambda p: p.name == "manifest.json") == \
            tree_bytes(decoded, lambda p: p.name == "manifest.json")


def test_decoding_into_a_read_only_or_busy_folder_is_one_line_before_the_models_load(
        tiny_config, label_maps, decoded, tmp_path, capsys):  # noqa: F811
    """The ControlNet path does not exist, so a run that got as far as loading models would exit 2."""
    args = decode_args(tiny_config, tmp_path / "missing", label_maps, decoded)
    with read_only_folder(decoded):
        assert process_decoding.main(args) == ExitStatus.OUTPUT  # even with nothing left to write
    assert error_lines(capsys.readouterr().err) == [
        f"error: cannot write {decoded}: Read-only file system; make it writable or choose another output folder"]
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom models.jobcontrol import output_lock\n"
                               f"with output_lock({str(decoded)!r}):\n    print('held', flush=True)\n"
                               "    time.sleep(60)"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert process_decoding.main(args) == ExitStatus.BUSY
    finally:
        holder.kill()
        holder.communicate()
    [line] = error_lines(capsys.readouterr().err)
    assert "in use by another run (host " in line and f"pid {holder.pid}," in line


def test_a_sem_file_replaced_after_planning_is_reported_with_its_old_record_not_written(
        tiny_config, trained_controlnet, tmp_path):  # noqa: F811
    from models.bitstream import write_sem
    from models.config import load_config
    from models.decode.decoder import ControlNetDecoder
    from models.decode.job import plan_decode, run_decode, run_settings
    from models.layout import CaptionIndex
    from models.runtime import DeviceSpec
    from models.semantic_code import SemanticCode

    config = load_config(tiny_config, [f"diffusion.controlnet_path={trained_controlnet}",
                                       "decode.num_inference_steps=2"])
    folder = tmp_path / "sem"
    labels = np.zeros((24, 32), dtype=np.uint8)
    labels[4:20, 8:24] = 12
    for name in ("a", "b"):
        write_sem(folder / f"{name}.sem", SemanticCode(labels, "a dog", seed=3))
    decoder = ControlNetDecoder.from_config(config)
    plan = plan_decode(folder, CaptionIndex({}), decoder, config)
    write_sem(folder / "b.sem", SemanticCode(labels, "a cat", seed=3))  # same size, other caption
    result = run_decode(plan, decoder, DeviceSpec("cpu", 1), tmp_path / "out", run_settings(decoder, config, "32"),
                        progress_bar=False)
    assert result.failures == {"b.sem": CHANGED_SINCE_PLANNED} and result.written == 1
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert list(manifest["images"]) == ["a.png"] and not (tmp_path / "out" / "b.png").exists()
