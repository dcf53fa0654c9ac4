"""The smp-based DeepLabV3+ against an independent reference of the original network."""

import argparse
import zipfile

import numpy as np
import pytest
import torch

from models.config import SegmentationConfig
from models.encode.segmentation import CheckpointError, DeepLabV3Plus, load_segmenter, load_state_dict, save_checkpoint
from tests.reference_deeplab import ReferenceDeepLabV3Plus


def randomize_batch_norm(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = ReferenceDeepLabV3Plus(depth=101, num_classes=21, output_stride=16)
    randomize_batch_norm(model)
    return model.eval()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def original_checkpoint(state_dict: dict) -> dict:
    return {"cur_itrs": 30000, "model_state": state_dict, "optimizer_state": {},
            "scheduler_state": {}, "best_score": np.float64(0.7712)}


def test_original_state_dict_gives_reference_logits(reference, tmp_path):
    path = tmp_path / "best_deeplabv3plus_resnet101_voc_os16.pth"
    torch.save(original_checkpoint(reference.state_dict()), path)
    config = SegmentationConfig(checkpoint=str(path))
    ours = load_segmenter(config)
    for size in ((64, 64), (65, 47), (97, 130)):  # multiples of 16 and odd sizes
        images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(size[0]))
        with torch.no_grad():
            expected, actual = reference(images), ours(images)
        assert actual.shape == (2, 21, *size)
        assert relative_error(expected, actual) < 1e-5


def test_output_stride_8_matches_reference(reference, tmp_path):
    dense_reference = ReferenceDeepLabV3Plus(depth=101, output_stride=8).eval()
    dense_reference.load_state_dict(reference.state_dict())
    ours = DeepLabV3Plus(output_stride=8).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    images = torch.randn(1, 3, 48, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert relative_error(dense_reference(images), ours(images)) < 1e-5


def test_check_is_sensitive_to_the_original_dilation_rule(reference):
    """Negative control: smp's rule (dilating the first block too) gives different logits."""
    ours = DeepLabV3Plus().eval()
    ours.load_state_dict(reference.state_dict())
    first_conv = ours.backbone.layer4[0].conv2
    first_conv.dilation, first_conv.padding = (2, 2), (2, 2)
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert relative_error(reference(images), ours(images)) > 1e-3


def rewrite_pickle(source, target, old: bytes, new: bytes) -> None:
    """Copy a torch zip checkpoint, replacing bytes inside its pickle (simulates old numpy)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            dst.writestr(info.filename, data)


def test_numpy_scalars_load_with_weights_only_under_both_numpy_names(reference, tmp_path):
    torch.save(original_checkpoint(reference.state_dict()), tmp_path / "new.pth")
    rewrite_pickle(tmp_path / "new.pth", tmp_path / "old.pth",
                   b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
    for name in ("new.pth", "old.pth"):
        state_dict = load_state_dict(tmp_path / name)
        assert set(state_dict) == set(reference.state_dict())


def test_a_checkpoint_that_needs_pickle_is_refused_unless_allowed(reference, tmp_path):
    checkpoint = original_checkpoint(reference.state_dict())
    checkpoint["args"] = argparse.Namespace(lr=0.01)  # pickled training args, as old scripts did
    torch.save(checkpoint, tmp_path / "legacy.pth")
    with pytest.raises(CheckpointError, match="allow_pickle"):
        load_state_dict(tmp_path / "legacy.pth")
    assert "classifier.classifier.3.bias" in load_state_dict(tmp_path / "legacy.pth", allow_pickle=True)


def test_mismatched_checkpoints_are_explained(reference, tmp_path):
    torch.save(original_checkpoint(reference.state_dict()), tmp_path / "ok.pth")
    with pytest.raises(CheckpointError, match="predicts 21 classes"):
        load_segmenter(SegmentationConfig(checkpoint=str(tmp_path / "ok.pth"), num_classes=19))
    with pytest.raises(CheckpointError, match="do not fit encoder 'resnet50'"):
        load_segmenter(SegmentationConfig(checkpoint=str(tmp_path / "ok.pth"), encoder_name="resnet50"))
    with pytest.raises(CheckpointError, match="not found"):
        load_segmenter(SegmentationConfig(checkpoint=str(tmp_path / "missing.pth")))
    torch.save({"model_state": {"x": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a DeepLabV3"):
        load_segmenter(SegmentationConfig(checkpoint=str(tmp_path / "other.pth")))


def test_safetensors_round_trip_and_any_size_prediction(tmp_path):
    config = SegmentationConfig(encoder_name="resnet18", aspp_channels=16, low_level_channels=8)
    torch.manual_seed(3)
    model = DeepLabV3Plus.from_config(config).eval()
    randomize_batch_norm(model)
    save_checkpoint(model, config, tmp_path / "seg.safetensors")
    config.checkpoint = str(tmp_path / "seg.safetensors")
    loaded = load_segmenter(config)
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 255, size, dtype=np.uint8) for size in ((37, 53, 3), (16, 16, 3), (37, 53, 3))]
    label_maps = loaded.predict(images)
    assert [m.shape for m in label_maps] == [(37, 53), (16, 16), (37, 53)]
    assert all(m.dtype == np.uint8 and m.max() < 21 for m in label_maps)
    # A label map does not depend on the other images of its batch.
    for image, label_map in zip(images, label_maps):
        np.testing.assert_array_equal(model.predict([image])[0], label_map)


def test_inference_size_bounds_the_network_input_and_null_is_the_plain_forward(tmp_path):
    config = SegmentationConfig(encoder_name="resnet18", aspp_channels=16, low_level_channels=8)
    torch.manual_seed(4)
    model = DeepLabV3Plus.from_config(config).eval()
    randomize_batch_norm(model, seed=4)
    save_checkpoint(model, config, tmp_path / "seg.safetensors")
    config.checkpoint = str(tmp_path / "seg.safetensors")
    image = np.random.RandomState(1).randint(0, 255, (96, 160, 3), dtype=np.uint8)
    full = load_segmenter(config)  # inference_size null: each image at its own size
    with torch.no_grad():
        logits = full(full.normalize(torch.from_numpy(image)[None]))  # (1, 21, 96, 160)
    np.testing.assert_array_equal(full.predict([image])[0], logits[0].argmax(0).numpy())
    config.inference_size = 48
    bounded = load_segmenter(config)
    seen = []
    bounded.register_forward_hook(lambda module, inputs, output: seen.append(tuple(inputs[0].shape[-2:])))
    label_map = bounded.predict([image])[0]
    assert seen == [(48, 80)] and label_map.shape == (96, 160)  # run small, labelled at full size
    config.inference_size = 16
    with pytest.raises(CheckpointError, match="inference_size"):
        load_segmenter(config)
