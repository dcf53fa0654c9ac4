"""train.py end to end: DDP on two CPU processes, exact resume, checkpoint contents and size."""

import csv
import json

import pytest
import torch
from diffusers import ControlNetModel

import process_decoding
import train
from models.config import load_config
from models.decode.stable_diffusion import load_sd_components
from models.quickstart.shapes import write_shapes_dataset
from tests.threads import one_cpu_thread  # noqa: F401  (fixture)
from tests.conftest import run_script


pytestmark = pytest.mark.usefixtures("one_cpu_thread")

@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, {"train": 12, "val": 4}, size=64, seed=0)
    return root


def test_ddp_on_two_cpu_processes_writes_one_checkpoint_and_one_export(tiny_config, shapes_data, tmp_path):
    run = tmp_path / "run"
    result = run_script("train.py", "--config_path", tiny_config, "--data_root", shapes_data,
                        "--output_dir", run, "--accelerator", "cpu", "--devices", "2", "--max_steps", "6",
                        "--batch_size_per_gpu", "2", "--override", "train.val_every_n_steps=3",
                        "--override", "train.log_every_n_steps=1", "--no_progress_bar")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 process(es) x batch 2 x accumulation 1 = 4 images per step" in result.stdout
    assert "train: 12 image/label-map/caption pairs" in result.stdout
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step-0000006.ckpt"]
    assert (run / "checkpoints/last.ckpt").resolve() == (run / "checkpoints/step-0000006.ckpt").resolve()
    checkpoint = torch.load(run / "checkpoints/step-0000006.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 6
    exported = ControlNetModel.from_pretrained(run / "controlnet")
    assert set(checkpoint["state_dict"]) == {f"controlnet.{k}" for k in exported.state_dict()}
    for key, value in exported.state_dict().items():
        assert torch.equal(checkpoint["state_dict"][f"controlnet.{key}"], value)
    assert json.loads((run / "controlnet/semantic_compression.json").read_text())["global_step"] == 6
    with open(next((run / "logs/csv").glob("version_*/metrics.csv"))) as handle:
        rows = list(csv.DictReader(handle))
    assert len([r for r in rows if r.get("val/loss")]) == 2 and any(r.get("train/loss") for r in rows)
    assert sorted(p.name for p in (run / "validation").iterdir()) == [
        "step-0000003", "step-0000003.png", "step-0000006", "step-0000006.png"]
    assert len(list((run / "validation/step-0000006").iterdir())) == 2  # train.num_validation_images
    assert load_config(run / "config.yaml").train.max_steps == 6
    assert any((run / "logs/tensorboard").glob("version_*/events.*"))


def test_validation_images_are_what_process_decoding_writes(tiny_config, tmp_path):
    """The validation images of a short run equal process_decoding.py's output for the exported
    (EMA) weights with the same captions, seeds and settings; the untrained ControlNet gives others."""
    data = tmp_path / "data"
    write_shapes_dataset(data, {"train": 4, "val": 2}, size=64, seed=1)
    settings = ["--config_path", str(tiny_config), "--accelerator", "cpu", "--override", "decode.seed=7",
                "--override", "decode.num_inference_steps=3", "--override", "decode.guidance_scale=2.5"]
    assert train.main(settings + ["--data_root", str(data), "--output_dir", str(tmp_path / "run"), "--devices", "1",
                                  "--max_steps", "2", "--batch_size_per_gpu", "2", "--learning_rate", "1e-3",
                                  "--override", "train.warmup_steps=0", "--override", "train.val_every_n_steps=2",
                                  "--override", "train.ema_decay=0.5",
                                  "--override", "train.validation_inference_steps=null", "--no_progress_bar"]) == 0
    validation = sorted((tmp_path / "run/validation/step-0000002").iterdir())
    assert [path.name for path in validation] == ["shape_00000.png", "shape_00001.png"]
    for checkpoint, output in ((tmp_path / "run/controlnet", "decoded"),
                               (load_config(tiny_config).diffusion.controlnet_path, "untrained")):
        assert process_decoding.main(settings + ["--checkpoint_path", str(checkpoint), "--output_dir",
                                                 str(tmp_path / output), "--input_path",
                                                 str(data / "segmented_images/val")]) == 0
    for path in validation:
        assert path.read_bytes() == (tmp_path / "decoded" / path.name).read_bytes()
        assert path.read_bytes() != (tmp_path / "untrained" / path.name).read_bytes()


def _common(tiny_config, shapes_data):
    return ["--config_path", str(tiny_config), "--data_root", str(shapes_data), "--accelerator", "cpu",
            "--devices", "1", "--batch_size_per_gpu", "2", "--learning_rate", "1e-3", "--no_progress_bar",
            "--override", "diffusion.resolution=32", "--override", "train.warmup_steps=4",
            "--override", "train.val_every_n_steps=100", "--override", "train.ema_decay=0.9",
            "--override", "train.accumulate_grad_batches=2"]


@pytest.fixture(scope="module")
def resumed_and_straight_runs(one_cpu_thread, tiny_config, shapes_data, tmp_path_factory):
    """3 steps, then a resume to 6 steps; and 6 steps in one run."""
    common = _common(tiny_config, shapes_data)
    interrupted, straight = tmp_path_factory.mktemp("interrupted"), tmp_path_factory.mktemp("straight")
    assert train.main(common + ["--output_dir", str(interrupted), "--max_steps", "3"]) == 0
    assert train.main(common + ["--output_dir", str(interrupted), "--max_steps", "3"]) == 2  # no mixing
    assert train.main(common + ["--output_dir", str(interrupted), "--max_steps", "6", "--resume", "last"]) == 0
    assert train.main(common + ["--output_dir", str(straight), "--max_steps", "6"]) == 0
    return interrupted, straight


def test_resume_continues_exactly_where_training_stopped(resumed_and_straight_runs):
    """Resumed equals straight bitwise (tolerance 0, CPU) for the ControlNet, its EMA, the AdamW
    moments and the learning-rate schedule, with the warm-up (4 steps) and the gradient
    accumulation (2 micro-batches) spanning the interruption."""
    interrupted, straight = resumed_and_straight_runs
    resumed = torch.load(interrupted / "checkpoints/step-0000006.ckpt", weights_only=True)
    direct = torch.load(straight / "checkpoints/step-0000006.ckpt", weights_only=True)
    middle = torch.load(interrupted / "checkpoints/step-0000003.ckpt", weights_only=True)
    assert resumed["state_dict"].keys() == direct["state_dict"].keys()
    assert any(k.startswith("controlnet_ema.") for k in resumed["state_dict"])
    for key, value in direct["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    assert any(not torch.equal(middle["state_dict"][k], v) for k, v in direct["state_dict"].items())
    resumed_moments = resumed["optimizer_states"][0]["state"]
    for index, state in direct["optimizer_states"][0]["state"].items():
        assert torch.equal(resumed_moments[index]["exp_avg_sq"], state["exp_avg_sq"])
    assert resumed["lr_schedulers"] == direct["lr_schedulers"]


def test_resume_last_passes_over_a_truncated_newest_checkpoint(resumed_and_straight_runs, tiny_config, shapes_data,
                                                             tmp_path, capsys):
    """A newest checkpoint cut short (a full disk, a kill) is set aside with a warning, the one
    before it is resumed, and the run ends where an uninterrupted one does; the temporary file of a
    killed checkpoint write is removed."""
    interrupted, straight = resumed_and_straight_runs
    checkpoints = tmp_path / "run/checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "step-0000003.ckpt").write_bytes((interrupted / "checkpoints/step-0000003.ckpt").read_bytes())
    whole = (interrupted / "checkpoints/step-0000006.ckpt").read_bytes()
    (checkpoints / "step-0000006.ckpt").write_bytes(whole[:len(whole) // 2])
    (checkpoints / ".step-0000004.ckpt.x1y2z3.ckpt.tmp").write_bytes(whole[:1000])
    capsys.readouterr()
    common = _common(tiny_config, shapes_data)
    assert train.main(common + ["--output_dir", str(tmp_path / "run"), "--max_steps", "6", "--resume", "last"]) == 0
    err = capsys.readouterr().err
    assert "step-0000006.ckpt is unreadable" in err and "set aside as step-0000006.ckpt.unreadable" in err
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step-0000003.ckpt", "step-0000006.ckpt",
                                                             "step-0000006.ckpt.unreadable"]
    again = torch.load(checkpoints / "step-0000006.ckpt", weights_only=True)["state_dict"]
    direct = torch.load(straight / "checkpoints/step-0000006.ckpt", weights_only=True)["state_dict"]
    for key, value in direct.items():
        assert torch.equal(again[key], value), key


def test_a_checkpoint_write_that_fills_the_disk_leaves_no_partial_file(tmp_path):
    """On a 1 MB file system (tmpfs, root only) a 2 MB checkpoint fails for want of space: the
    previous checkpoint stays, and neither a truncated step file nor a temporary file is left."""
    import subprocess

    from models.imageio import OutputError
    from models.train.run import AtomicCheckpointIO, checkpoint_problem

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        writer = AtomicCheckpointIO()
        writer.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}}, small / "step-0000001.ckpt")
        with pytest.raises(OutputError, match="step-0000002.ckpt: No space left on device"):
            writer.save_checkpoint({"state_dict": {"w": torch.zeros(500_000)}}, small / "step-0000002.ckpt")
        assert sorted(p.name for p in small.iterdir()) == ["step-0000001.ckpt"]
        assert checkpoint_problem(small / "step-0000001.ckpt") is None
        assert torch.load(small / "step-0000001.ckpt", weights_only=True)["state_dict"]["w"].shape == (1000,)
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_resume_from_a_periodic_checkpoint_keeps_the_ema_exact(tiny_config, shapes_data, tmp_path):
    """A checkpoint saved every 3 steps holds that step's EMA update: resuming from it gives the
    uninterrupted run's EMA, and the last checkpoint's EMA is what the export holds."""
    import shutil

    common = _common(tiny_config, shapes_data) + ["--override", "train.checkpoint_every_n_steps=3",
                                                  "--override", "train.keep_checkpoints=-1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train.main(common + ["--output_dir", str(straight), "--max_steps", "6"]) == 0
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(straight / "checkpoints/step-0000003.ckpt", resumed / "checkpoints")
    assert train.main(common + ["--output_dir", str(resumed), "--max_steps", "6", "--resume", "last"]) == 0
    direct = torch.load(straight / "checkpoints/step-0000006.ckpt", weights_only=True)["state_dict"]
    again = torch.load(resumed / "checkpoints/step-0000006.ckpt", weights_only=True)["state_dict"]
    for key, value in direct.items():
        assert torch.equal(again[key], value), key
    exported = ControlNetModel.from_pretrained(straight / "controlnet").state_dict()
    for key, value in exported.items():
        assert torch.equal(direct[f"controlnet_ema.{key}"], value), key
    for run in (straight, resumed):  # last.ckpt follows the periodic checkpoints too
        last = run / "checkpoints/last.ckpt"
        assert last.is_symlink() and last.resolve() == (run / "checkpoints/step-0000006.ckpt").resolve()


def test_the_checkpoint_holds_no_frozen_weights(tiny_config, resumed_and_straight_runs):
    """Keys: the ControlNet and its EMA only. Size: those two plus the two AdamW moments of the
    ControlNet, plus a little metadata; the frozen VAE, text encoder and UNet would add their size."""
    path = resumed_and_straight_runs[1] / "checkpoints/step-0000006.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert {k.split(".")[0] for k in checkpoint["state_dict"]} == {"controlnet", "controlnet_ema"}
    components = load_sd_components(load_config(tiny_config).diffusion.sd_model_path)
    frozen_bytes = sum(p.numel() * 4 for m in (components.vae, components.text_encoder, components.unet)
                       for p in m.parameters())
    controlnet_bytes = sum(v.numel() * 4 for k, v in checkpoint["state_dict"].items()
                           if k.startswith("controlnet."))
    size = path.stat().st_size
    # measured: 4 x 2.74 MB of tensors + 0.07 MB; the frozen weights are 8.4 MB
    assert 4 * controlnet_bytes < size < 4 * controlnet_bytes + 0.05 * frozen_bytes


def test_resume_without_a_checkpoint_is_a_clear_error(tiny_config, shapes_data, tmp_path, capsys):
    common = _common(tiny_config, shapes_data)
    assert train.main(common + ["--output_dir", str(tmp_path / "empty"), "--resume", "last"]) == 2
    assert "no readable step-*.ckpt" in capsys.readouterr().err
    assert train.main(common + ["--data_root", str(tmp_path), "--output_dir", str(tmp_path / "r")]) == 2
    assert "no training pairs" in capsys.readouterr().err


def test_every_memory_and_speed_option_trains_together(tiny_config, shapes_data, tmp_path):
    """bf16 autocast (CPU), gradient checkpointing, channels_last, plain attention, latent and
    text caching, one-hot control, the UNet decoder half and EMA in one short run."""
    options = ["diffusion.controlnet_path=null", "diffusion.conditioning=onehot",
               "train.gradient_checkpointing=true", "train.channels_last=true", "train.attention=eager",
               "train.cache_latents=true", "train.random_crop=false", "train.random_flip=false",
               "train.unet_decoder=true", "train.ema_decay=0.99", "train.accumulate_grad_batches=1",
               "train.val_every_n_steps=2"]
    arguments = _common(tiny_config, shapes_data) + ["--output_dir", str(tmp_path / "run"),
                                                     "--max_steps", "2", "--precision", "bf16-mixed"]
    for option in options:
        arguments += ["--override", option]
    assert train.main(arguments) == 0
    checkpoint = torch.load(tmp_path / "run/checkpoints/step-0000002.ckpt", weights_only=True)
    assert {k.split(".")[0] for k in checkpoint["state_dict"]} == {"controlnet", "controlnet_ema", "unet"}
    assert all(v.dtype == torch.float32 for v in checkpoint["state_dict"].values())  # trained in fp32
    assert ControlNetModel.from_pretrained(tmp_path / "run/controlnet").config.conditioning_channels == 21
    assert (tmp_path / "run/controlnet/unet_trainable.safetensors").exists()
    assert (tmp_path / "run/validation/step-0000002.png").exists()


def test_gpus_without_cuda_are_one_clear_line(tiny_config, shapes_data, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    arguments = ["--config_path", str(tiny_config), "--data_root", str(shapes_data), "--gpus", "0",
                 "--output_dir", str(tmp_path / "run")]
    assert train.main(arguments) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
