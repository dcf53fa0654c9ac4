"""Every --checkpoint_path format loads the same ControlNet; wrong kinds get one clear line."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from safetensors.torch import save_file

import process_decoding
from models.config import apply_overrides, load_config
from models.decode.controlnet_loader import (CheckpointFormatError, ControlNetSource, load_controlnet,
                                             resolve_control_spec)
from models.decode.decoder import ControlNetDecoder
from tests.decode_fixtures import (base_unet, label_maps, perturb, trained_controlnet,  # noqa: F401 (fixtures)
                                   up_block_weights, write_export_folder, write_original_file,
                                   write_training_checkpoint)


def assert_same_weights(model, reference_state):
    state = model.state_dict()
    assert state.keys() == reference_state.keys()
    assert all(torch.equal(state[k], reference_state[k]) for k in state)


@pytest.fixture(scope="module")
def reference(trained_controlnet):  # noqa: F811
    return ControlNetModel.from_pretrained(trained_controlnet)


def test_every_format_gives_the_same_controlnet(reference, trained_controlnet, tiny_config, tmp_path):  # noqa: F811
    unet = base_unet(tiny_config)
    trained_unet = up_block_weights(unet, seed=3)
    ema = perturb(ControlNetModel.from_pretrained(trained_controlnet), seed=2)
    paths = {
        "diffusers": str(trained_controlnet),
        "export": str(write_export_folder(tmp_path / "export", reference,
                                          {"conditioning": "palette", "palette": "ade20k", "num_classes": 21,
                                           "resolution": 64, "sd_model_path": "somewhere", "format_version": 1},
                                          trained_unet)),
        "training": str(write_training_checkpoint(tmp_path / "last.ckpt", reference, tiny_config)),
        "original": str(write_original_file(tmp_path / "final.ckpt", reference, unet)),
    }
    save_file(reference.state_dict(), tmp_path / "single.safetensors")  # diffusers names, one file
    for kind, path in [*paths.items(), ("diffusers", str(tmp_path / "single.safetensors"))]:
        source = load_controlnet(path, unet)
        assert source.format == kind
        assert_same_weights(source.controlnet, reference.state_dict())
    export = load_controlnet(paths["export"], unet)
    assert export.metadata["palette"] == "ade20k"
    assert export.unet_weights.keys() == trained_unet.keys()
    assert all(torch.equal(export.unet_weights[k], trained_unet[k]) for k in trained_unet)
    original = load_controlnet(paths["original"], unet)  # its UNet is converted too, exactly
    assert all(torch.equal(original.unet_weights[k], v) for k, v in unet.state_dict().items())
    with_ema = load_controlnet(str(write_training_checkpoint(tmp_path / "ema.ckpt", reference, tiny_config,
                                                             ema=ema, unet=trained_unet)), unet)
    assert with_ema.metadata["ema"] is True and with_ema.metadata["resolution"] == 64
    assert_same_weights(with_ema.controlnet, ema.state_dict())  # the EMA copy is what decodes
    assert with_ema.unet_weights.keys() == trained_unet.keys()
    newer = write_export_folder(tmp_path / "newer", reference, {"palette": "voc", "format_version": 2})
    with pytest.raises(CheckpointFormatError, match="export format 2; this version reads 1"):
        load_controlnet(str(newer), unet)


def test_trained_unet_weights_are_overlaid_on_the_base_unet(reference, tiny_config, tmp_path):
    trained_unet = up_block_weights(base_unet(tiny_config), seed=4)
    path = write_training_checkpoint(tmp_path / "unfrozen.ckpt", reference, tiny_config, unet=trained_unet)
    decoder = ControlNetDecoder.from_config(load_config(tiny_config), str(path))
    state = decoder.pipeline.unet.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained_unet.items())
    untouched = base_unet(tiny_config).state_dict()
    assert all(torch.equal(state[k], v) for k, v in untouched.items() if not k.startswith("up_blocks."))


def decode_folder(config_path, input_dir, output_dir, *extra):
    status = process_decoding.main(["--config_path", str(config_path), "--input_path", str(input_dir),
                                    "--output_dir", str(output_dir), "--num_inference_steps", "2",
                                    "--device", "cpu", *map(str, extra)])
    assert status == 0
    return {p.relative_to(output_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(output_dir.rglob("*.png"))}


@pytest.fixture(scope="module")
def two_label_maps(label_maps, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("two") / "maps"
    folder.mkdir()
    prompts = json.loads((label_maps / "prompts.json").read_text())
    for name in sorted(p.name for p in label_maps.glob("*.png"))[:2]:
        shutil.copy(label_maps / name, folder / name)
    (folder / "prompts.json").write_text(json.dumps({k: v for k, v in prompts.items() if "/" not in k}))
    return folder


def test_an_original_format_file_decodes_like_the_diffusers_model(
        reference, trained_controlnet, tiny_config, two_label_maps, tmp_path):  # noqa: F811
    """Acceptance: the same ControlNet as an original-format ControlLDM file and as diffusers."""
    original = write_original_file(tmp_path / "final.ckpt", reference, base_unet(tiny_config))
    expected = decode_folder(tiny_config, two_label_maps, tmp_path / "diffusers",
                             "--checkpoint_path", trained_controlnet)
    same_convention = decode_folder(tiny_config, two_label_maps, tmp_path / "original",
                                    "--checkpoint_path", original, "--control_range", "unit", "--keep_aspect")
    assert len(expected) == 2 and same_convention == expected
    # By default an original-format file is decoded as the original project did.
    auto = decode_folder(tiny_config, two_label_maps, tmp_path / "auto", "--checkpoint_path", original)
    control = json.loads((tmp_path / "auto" / "manifest.json").read_text())["settings"]["control"]
    assert control["value_range"] == "signed" and control["keep_aspect"] is False
    assert auto.keys() == expected.keys() and auto != expected


def source_named(path, controlnet, kind, metadata=None):
    return ControlNetSource(controlnet=controlnet, format=kind, path=path, metadata=metadata or {})


def test_control_conventions_follow_the_checkpoint_unless_set(reference, tiny_config):
    config = load_config(tiny_config)
    spec, note = resolve_control_spec(source_named("/x/final.ckpt", reference, "original"), config)
    assert (spec.palette, spec.value_range, spec.keep_aspect) == ("voc", "signed", False)
    assert "original project" in note
    for public in ("/x/control_sd15_seg.pth", "lllyasviel/sd-controlnet-seg"):
        spec, _ = resolve_control_spec(source_named(public, reference, "original"), config)
        assert (spec.palette, spec.value_range, spec.keep_aspect) == ("ade20k", "unit", True)
    spec, _ = resolve_control_spec(source_named("/x/export", reference, "export",
                                                {"palette": "ade20k", "resolution": 96}), config)
    assert (spec.palette, spec.resolution, spec.value_range, spec.keep_aspect) == ("ade20k", 96, "unit", True)
    spec, _ = resolve_control_spec(source_named("/x/export", reference, "export", {"keep_aspect": False}), config)
    assert not spec.keep_aspect  # trained on square-stretched maps (train.resize_mode=stretch)
    apply_overrides(config, ["decode.palette=voc", "decode.control_range=signed", "decode.keep_aspect=false",
                             "decode.resolution=128"])
    spec, _ = resolve_control_spec(source_named("lllyasviel/sd-controlnet-seg", reference, "diffusers"), config)
    assert (spec.palette, spec.value_range, spec.keep_aspect, spec.resolution) == ("voc", "signed", False, 128)
    with pytest.raises(CheckpointFormatError, match="onehot conditioning needs 21 control channels"):
        resolve_control_spec(source_named("/x/export", reference, "export",
                                          {"conditioning": "onehot", "num_classes": 21}),
                             load_config(tiny_config))


def test_wrong_kinds_of_checkpoint_are_named(tiny_config, tmp_path):
    config = load_config(tiny_config)
    unet = base_unet(tiny_config)
    (tmp_path / "noise.ckpt").write_bytes(b"definitely not a checkpoint")
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, tmp_path / "sd.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    cases = {
        config.segmentation.checkpoint: "refused by safe loading",  # numpy scalar inside: needs pickle
        config.diffusion.sd_model_path: "a Stable Diffusion folder",
        f"{config.diffusion.sd_model_path}/unet": "holds a UNet2DConditionModel",
        str(tmp_path / "noise.ckpt"): "not a readable checkpoint",
        str(tmp_path / "sd.ckpt"): "without a ControlNet",
        str(tmp_path / "other.pth"): "not a ControlNet checkpoint: top-level keys 'weights'",
        str(tmp_path / "missing.ckpt"): "no such file",
    }
    for path, message in cases.items():
        with pytest.raises(CheckpointFormatError, match=message) as error:
            load_controlnet(path, unet)
        assert path in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(CheckpointFormatError, match="DeepLabV3"):
        load_controlnet(config.segmentation.checkpoint, unet, allow_pickle=True)


def test_a_file_that_needs_pickle_loads_only_when_allowed(reference, tiny_config, tmp_path):
    path = write_original_file(tmp_path / "old.ckpt", reference)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["best_score"] = np.float64(0.5)  # as older Lightning callbacks stored
    torch.save(checkpoint, path)
    unet = base_unet(tiny_config)
    with pytest.raises(CheckpointFormatError, match="--allow_pickle"):
        load_controlnet(str(path), unet)
    assert_same_weights(load_controlnet(str(path), unet, allow_pickle=True).controlnet, reference.state_dict())


def test_the_script_reports_a_wrong_checkpoint_in_one_line(tiny_config, label_maps, tmp_path, capsys):  # noqa: F811
    status = process_decoding.main(["--config_path", str(tiny_config), "--input_path", str(label_maps),
                                    "--output_dir", str(tmp_path / "out"), "--device", "cpu",
                                    "--checkpoint_path", str(tmp_path / "nothing.ckpt")])
    assert status == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert errors == [f"error: {tmp_path / 'nothing.ckpt'}: no such file or folder (nor a Hugging Face id)"]
    assert not list((tmp_path).rglob("*.png"))


def test_a_controlnet_for_another_base_model_is_refused_naming_both(tiny_config, tmp_path, capsys):
    """As an SD2 ControlNet against SD1.5: other text-embedding width. Refused before any work,
    by decoding and by training, instead of a tensor-size error in the first step."""
    import train
    from tests.test_train_run import write_shapes_dataset

    config = load_config(tiny_config)
    unet = base_unet(tiny_config)
    other = {**ControlNetModel.from_unet(unet).config, "cross_attention_dim": 2 * unet.config.cross_attention_dim}
    foreign = tmp_path / "controlnet-other-base"
    ControlNetModel.from_config({k: v for k, v in other.items() if not k.startswith("_")}).save_pretrained(foreign)
    with pytest.raises(CheckpointFormatError, match="was made for another base model") as error:
        load_controlnet(str(foreign), unet, base_name=config.diffusion.sd_model_path)
    assert str(foreign) in str(error.value) and config.diffusion.sd_model_path in str(error.value)
    assert f"cross_attention_dim {2 * unet.config.cross_attention_dim} against" in str(error.value)
    write_shapes_dataset(tmp_path / "data", {"train": 2}, size=32, seed=0)
    status = train.main(["--config_path", str(tiny_config), "--data_root", str(tmp_path / "data"), "--accelerator",
                         "cpu", "--devices", "1", "--max_steps", "1", "--output_dir", str(tmp_path / "run"),
                         "--override", f"diffusion.controlnet_path={foreign}", "--no_progress_bar"])
    assert status == 2
    assert "was made for another base model" in capsys.readouterr().err
    (tmp_path / "x.ckpt").write_bytes(b"a training checkpoint, say")
    assert train.main(["--config_path", str(tiny_config), "--data_root", str(tmp_path / "data"), "--accelerator",
                       "cpu", "--devices", "1", "--max_steps", "1", "--output_dir", str(tmp_path / "run2"),
                       "--override", f"diffusion.controlnet_path={tmp_path / 'x.ckpt'}", "--no_progress_bar"]) == 2
    assert "cannot fine-tune from the file" in capsys.readouterr().err  # a folder or hub id, as documented
