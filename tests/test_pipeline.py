"""The stages fit together: prepare a data set, train on it, decode with what training wrote."""

import pytest
import torch

import process_decoding
import train
from tests.test_prepare_data import make_voc_tree, run as prepare
from tests.threads import one_cpu_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def trained_on_prepared_voc(one_cpu_thread, tiny_config, tmp_path_factory):  # noqa: F811
    """VOC-style tree -> models.train.prepare_data (ground-truth maps) -> 3 training steps with EMA."""
    root = tmp_path_factory.mktemp("pipeline")
    devkit = make_voc_tree(root, ["2007_000032", "2007_000039", "2007_000063", "2007_000068"],
                           ["2007_000783", "2007_001311"])
    status, _ = prepare("--voc_root", devkit, "--label_source", "gt", "--data_root", root / "data",
                        "--config_path", tiny_config, "--val_fraction", 0.25, "--device", "cpu")
    assert status == 0
    run = root / "run"
    status = train.main(["--config_path", str(tiny_config), "--data_root", str(root / "data"),
                         "--output_dir", str(run), "--accelerator", "cpu", "--devices", "1",
                         "--max_steps", "3", "--batch_size_per_gpu", "2", "--learning_rate", "1e-3",
                         "--no_progress_bar", "--override", "diffusion.resolution=32",
                         "--override", "train.ema_decay=0.5", "--override", "train.warmup_steps=0",
                         "--override", "train.val_every_n_steps=100"])
    assert status == 0
    return root, run


def test_training_runs_on_the_layout_prepare_data_writes(trained_on_prepared_voc):
    _, run = trained_on_prepared_voc
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step-0000003.ckpt"]
    assert (run / "controlnet" / "diffusion_pytorch_model.safetensors").is_file()


def test_the_checkpoint_and_its_export_decode_to_the_same_images(trained_on_prepared_voc, tiny_config):
    root, run = trained_on_prepared_voc
    label_maps = root / "data" / "segmented_images" / "test"
    # Control: the same checkpoint without its EMA copy (the raw weights) must decode differently.
    checkpoint = torch.load(run / "checkpoints" / "step-0000003.ckpt", weights_only=True)
    state = checkpoint["state_dict"]
    checkpoint["state_dict"] = {k: v for k, v in state.items() if not k.startswith("controlnet_ema.")}
    checkpoint["semantic_compression"]["ema"] = False
    torch.save(checkpoint, root / "raw.ckpt")
    outputs = {}
    for name, checkpoint in (("ckpt", run / "checkpoints" / "step-0000003.ckpt"), ("export", run / "controlnet"),
                             ("raw", root / "raw.ckpt")):
        output_dir = root / f"decoded-{name}"
        status = process_decoding.main(["--config_path", str(tiny_config), "--checkpoint_path", str(checkpoint),
                                        "--input_path", str(label_maps), "--output_dir", str(output_dir),
                                        "--num_inference_steps", "2", "--device", "cpu"])
        assert status == 0
        outputs[name] = {p.name: p.read_bytes() for p in sorted(output_dir.glob("*.png"))}
    assert len(outputs["ckpt"]) == 2  # VOC's val.txt is the test split
    assert outputs["ckpt"] == outputs["export"]  # both the EMA weights, rendered the same way
    assert outputs["raw"] != outputs["ckpt"]
