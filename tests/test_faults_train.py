"""train.py under faults: SIGTERM, Ctrl-C, SLURM's requeue signal, a full disk, a read-only run folder
and a second run on the same folder. Each run is a real process (tests/faults.py); a run stopped and
resumed must end bitwise where a straight run ends."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from models.quickstart.shapes import write_shapes_dataset
from models.train.run import checkpoint_problem
from tests.conftest import REPO
from tests.faults import error_lines, read_only_folder, small_file_system, start_script, stop, wait_until

MAX_STEPS = 10
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # as tests/threads.py, for speed; every run alike, for bitwise equality
SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "decoder", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_NNODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
STOPPED = re.compile(r"^interrupted \((\w+)\): stopped after step (\d+), saved in (\S+) \(not exported\); (.*)$",
                     re.MULTILINE)


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, {"train": 12, "val": 4}, size=64, seed=0)
    return root


@pytest.fixture(scope="module")
def arguments(tiny_config, shapes_data):
    """A run of MAX_STEPS steps of 2 micro-batches, a checkpoint every 2 steps and no validation."""
    return ["--config_path", tiny_config, "--data_root", shapes_data, "--accelerator", "cpu", "--devices", "1",
            "--batch_size_per_gpu", "2", "--learning_rate", "1e-3", "--max_steps", MAX_STEPS, "--no_progress_bar",
            "--override", "diffusion.resolution=32", "--override", "train.warmup_steps=4",
            "--override", "train.val_every_n_steps=100", "--override", "train.ema_decay=0.9",
            "--override", "train.accumulate_grad_batches=2", "--override", "train.checkpoint_every_n_steps=2"]


def train(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """train.py run to its end in a fresh process."""
    return subprocess.run([sys.executable, str(REPO / "train.py"), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **ONE_THREAD, **(env or {})})


@pytest.fixture(scope="module")
def straight_run(arguments, tmp_path_factory):
    run = tmp_path_factory.mktemp("straight")
    done = train(*arguments, "--output_dir", run)
    assert done.returncode == 0, done.stderr[-4000:]
    return run


def assert_same_training(run, straight):
    """The last checkpoint (weights, EMA, AdamW moments, schedule, counters) and the export of
    ``run`` equal those of ``straight``, bitwise."""
    final = f"checkpoints/step-{MAX_STEPS:07d}.ckpt"
    resumed = torch.load(run / final, weights_only=True)
    direct = torch.load(straight / final, weights_only=True)
    assert resumed["global_step"] == direct["global_step"] == MAX_STEPS
    assert resumed["state_dict"].keys() == direct["state_dict"].keys()
    for key, value in direct["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    moments = resumed["optimizer_states"][0]["state"]
    for index, state in direct["optimizer_states"][0]["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(moments[index][name], state[name]), (index, name)
    assert resumed["lr_schedulers"] == direct["lr_schedulers"]
    exported = load_file(run / "controlnet/diffusion_pytorch_model.safetensors")
    for key, value in load_file(straight / "controlnet/diffusion_pytorch_model.safetensors").items():
        assert torch.equal(exported[key], value), key


def stopped_line(stderr: str) -> re.Match:
    """The one ``interrupted (...)`` line of a stopped run (and nothing that looks like a crash)."""
    assert "Traceback" not in stderr and not error_lines(stderr), stderr[-4000:]
    lines = STOPPED.findall(stderr)
    assert len(lines) == 1, stderr[-4000:]
    return STOPPED.search(stderr)


def start_and_wait(arguments, run, step: int = 2, env: dict | None = None):
    """train.py started in the background, once it has saved the checkpoint of ``step``."""
    process = start_script("train.py", *arguments, "--output_dir", run, env={**ONE_THREAD, **(env or {})})
    wait_until(lambda: (run / f"checkpoints/step-{step:07d}.ckpt").exists(), process)
    return process


def assert_stopped_with_checkpoint(stderr: str, run, signame: str) -> int:
    """The line names the signal, the step and its checkpoint, which is whole and linked as last."""
    line = stopped_line(stderr)
    step = int(line.group(2))
    assert line.group(1) == signame and 2 <= step < MAX_STEPS
    assert line.group(3) == str(run / f"checkpoints/step-{step:07d}.ckpt")
    assert line.group(4) == "run the same command with --resume last (or auto)"
    checkpoint = run / f"checkpoints/step-{step:07d}.ckpt"
    assert checkpoint_problem(checkpoint) is None
    assert torch.load(checkpoint, weights_only=True)["global_step"] == step
    assert (run / "checkpoints/last.ckpt").resolve() == checkpoint.resolve()
    assert not (run / "controlnet").exists() and not list(run.rglob("*.tmp")) and not (run / ".run.lock").exists()
    return step


def test_sigterm_saves_the_step_and_the_resumed_run_ends_as_a_straight_one(arguments, straight_run, tmp_path):
    """SIGTERM: exit 143 with one line (step, checkpoint, how to resume), that step saved as a whole
    checkpoint, no export, no traceback; `--resume last` then ends bitwise equal to a straight run."""
    run = tmp_path / "run"
    process = start_and_wait(arguments, run)
    status, _, err = stop(process, signal.SIGTERM)
    assert status == 143, err[-4000:]
    assert_stopped_with_checkpoint(err, run, "SIGTERM")
    resumed = train(*arguments, "--output_dir", run, "--resume", "last")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert_same_training(run, straight_run)


def test_ctrl_c_saves_the_step_and_resume_auto_ends_as_a_straight_run(arguments, straight_run, tmp_path):
    """SIGINT, a moment after a periodic checkpoint (so that the stop usually saves a step of its
    own): exit 130, the line, the step saved; `--resume auto` ends bitwise equal to a straight run."""
    run = tmp_path / "run"
    process = start_and_wait(arguments, run)
    time.sleep(0.3)
    status, _, err = stop(process, signal.SIGINT)
    assert status == 130, err[-4000:]
    assert_stopped_with_checkpoint(err, run, "SIGINT")
    resumed = train(*arguments, "--output_dir", run, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming from" in resumed.stdout
    assert_same_training(run, straight_run)


def test_ddp_stops_on_sigterm_to_the_process_group(arguments, tmp_path):
    """Two CPU processes with a data-loader worker each, SIGTERM to the whole process group (as SLURM
    and a terminal send it): both ranks stop at the same step, one checkpoint, exit 143, no hang."""
    run = tmp_path / "run"
    ddp = [*arguments[:arguments.index("--devices")], "--devices", "2", *arguments[arguments.index("--devices") + 2:],
           "--override", "train.num_workers=1"]
    process = start_and_wait(ddp, run)
    status, _, err = stop(process, signal.SIGTERM, group=True, timeout=120)
    assert status == 143, err[-4000:]
    step = assert_stopped_with_checkpoint(err, run, "SIGTERM")
    assert {path.name for path in (run / "checkpoints").glob("step-*.ckpt")} <= {
        "step-0000002.ckpt", f"step-{step:07d}.ckpt"}


def test_a_full_disk_mid_run_is_one_error_line_and_the_run_resumes_elsewhere(arguments, straight_run, tmp_path):
    """On a 72 MiB file system a checkpoint every step (11 MB each) fills it after a few steps: exit
    4, one error line naming the checkpoint, no traceback, no truncated checkpoint and no temporary
    file; the run folder moved to a big disk resumes and ends bitwise equal to a straight run."""
    small = tmp_path / "small"
    with small_file_system(small, "72m"):
        done = train(*arguments, "--output_dir", small / "run", "--override", "train.checkpoint_every_n_steps=1",
                     "--override", "train.keep_checkpoints=-1")
        assert done.returncode == 4, done.stderr[-4000:]
        assert "Traceback" not in done.stderr
        [line] = error_lines(done.stderr)
        assert re.fullmatch(r"error: cannot write \S+/checkpoints/step-\d{7}\.ckpt: No space left on device; "
                            r"free some space, then run the same command with --resume last \(or auto\)", line), line
        saved = sorted((small / "run/checkpoints").glob("step-*.ckpt"))
        assert 2 <= len(saved) < MAX_STEPS and all(checkpoint_problem(path) is None for path in saved)
        assert not list(small.rglob("*.tmp"))
        shutil.copytree(small / "run", tmp_path / "moved", symlinks=True)
    resumed = train(*arguments, "--output_dir", tmp_path / "moved", "--resume", "last")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resuming from {tmp_path / 'moved/checkpoints'}/{saved[-1].name}" in resumed.stdout
    assert_same_training(tmp_path / "moved", straight_run)


def test_a_read_only_run_folder_stops_before_any_model_loads(arguments, tmp_path):
    run = tmp_path / "run"
    with read_only_folder(run):
        started = time.monotonic()
        done = train(*arguments, "--output_dir", run)
        elapsed = time.monotonic() - started
    assert done.returncode == 4, done.stderr[-4000:]
    assert error_lines(done.stderr) == [
        f"error: cannot write {run}: {os.strerror(30 if os.geteuid() == 0 else 13)}; "
        f"make it writable or choose another output folder"]
    assert "Traceback" not in done.stderr and "Loading weights" not in done.stderr
    assert "pairs" not in done.stdout and "run folder" not in done.stdout  # not even the data was indexed
    assert list(run.iterdir()) == []
    assert elapsed < 60  # measured: about 6 s, the imports


def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(arguments, tmp_path):
    run = tmp_path / "run"
    first = start_script("train.py", *arguments, "--output_dir", run, "--max_steps", 1000, env=ONE_THREAD)
    wait_until(lambda: (run / ".run.lock").exists() and (run / "config.yaml").exists(), first)
    second = train(*arguments, "--output_dir", run, "--resume", "auto")
    status, _, err = stop(first, signal.SIGTERM)
    assert second.returncode == 5, second.stderr[-4000:]
    [line] = error_lines(second.stderr)
    assert f"{run} is in use by another run" in line and f"pid {first.pid}," in line
    assert "Traceback" not in second.stderr and "Loading weights" not in second.stderr
    assert status == 143, err[-4000:]


def test_slurm_requeue_saves_an_hpc_checkpoint_requeues_and_resume_auto_continues(arguments, straight_run,
                                                                                  tmp_path):
    """As on a SLURM cluster with `#SBATCH --signal=SIGUSR1@90`: SIGUSR1 saves Lightning's
    hpc_ckpt_1.ckpt in the run folder (complete the moment it appears: written atomically), calls
    `scontrol requeue <job id>` (a stand-in records its arguments) and stops (128 + SIGUSR1); the
    same command, with `--resume auto`, resumes from it and ends bitwise equal to a straight run."""
    bin_dir, calls, run = tmp_path / "bin", tmp_path / "scontrol.calls", tmp_path / "run"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**SLURM_ENV, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    process = start_and_wait([*arguments, "--resume", "auto"], run, env=env)
    process.send_signal(signal.SIGUSR1)
    hpc = run / "hpc_ckpt_1.ckpt"
    wait_until(hpc.exists, process, timeout=120)
    assert checkpoint_problem(hpc) is None  # whole at first sight
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGUSR1, err[-4000:]
    line = stopped_line(err)
    assert line.group(1) == "SIGUSR1" and line.group(3) == str(hpc)
    assert line.group(4) == "SLURM job 4242 requeued: it resumes from there with --resume auto"
    assert calls.read_text() == "requeue 4242\n"
    step = int(line.group(2))
    assert torch.load(hpc, weights_only=True)["global_step"] == step < MAX_STEPS
    assert not list(run.rglob("*.tmp")) and not (run / "controlnet").exists()
    resumed = train(*arguments, "--output_dir", run, "--resume", "auto", env=env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resuming from {hpc}" in resumed.stdout
    assert calls.read_text() == "requeue 4242\n"
    assert_same_training(run, straight_run)


def test_data_workers_left_running_do_not_hold_up_the_exit():
    """Data-loader workers ignore SIGTERM (sent to the process group, it must not kill them), and
    Python's exit sends SIGTERM to the workers still alive and waits for them: those of a loader
    that Lightning's teardown did not stop (a signal broke it off) would hold the exit forever.
    ``end_data_workers`` kills them; without it this script hangs (measured)."""
    script = ("import multiprocessing\n"
              "from torch.utils.data import DataLoader\n"
              "from models.jobcontrol import ignore_stop_signals\n"
              "from models.train.stopping import end_data_workers\n"
              "before = set(multiprocessing.active_children())\n"
              "loader = DataLoader(list(range(8)), num_workers=2, persistent_workers=True,\n"
              "                    worker_init_fn=ignore_stop_signals)\n"
              "batches = iter(loader)\n"
              "next(batches)\n"
              "end_data_workers(set(multiprocessing.active_children()) - before)\n"
              "print(len(multiprocessing.active_children()))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "0\n", done.stderr[-4000:]
