import numpy as np
import pytest
import torch

from models.decode.control import check_drawable, conditioning_channels, control_tensor, resize_label_map
from models.palettes import (ADE20K, ADE20K_PALETTE, UINT8, VOC, VOC_IN_ADE20K_COLORS, VOC_PALETTE,
                             custom_label_set)


def test_palette_rendering_is_the_palette_in_zero_one():
    label_map = np.array([[0, 15], [255, 12]], dtype=np.uint8)
    control = control_tensor(label_map)
    assert control.shape == (3, 2, 2) and control.dtype == torch.float32
    assert torch.allclose(control[:, 0, 1] * 255, torch.tensor(VOC_PALETTE[15], dtype=torch.float32))
    assert torch.allclose(control[:, 1, 0] * 255, torch.tensor(VOC_PALETTE[255], dtype=torch.float32))
    ade = control_tensor(label_map, palette="ade20k")
    assert torch.allclose(ade[:, 0, 1] * 255, torch.tensor(VOC_IN_ADE20K_COLORS[15], dtype=torch.float32))


def test_ade20k_maps_are_drawn_as_the_public_controlnets_annotator_drew_them():
    """Annotation value v is model class v - 1 in mmseg's palette (wall = 120, 120, 120); 0 is black."""
    label_map = np.array([[1, 2, 3, 13], [0, 150, 1, 1]], dtype=np.uint8)  # wall building sky person / other ...
    control = (control_tensor(label_map, ADE20K, palette="ade20k") * 255).round().to(torch.uint8)
    expected = torch.from_numpy(np.stack([ADE20K_PALETTE[v - 1] if v else (0, 0, 0) for v in label_map.flat]))
    assert torch.equal(control.permute(1, 2, 0).reshape(-1, 3), expected.to(torch.uint8))
    assert tuple(control[:, 0, 0].tolist()) == (120, 120, 120) and tuple(control[:, 0, 1].tolist()) == (180, 120, 120)
    with pytest.raises(ValueError, match="cannot be drawn for a ControlNet trained on voc"):
        control_tensor(label_map, ADE20K, palette="voc")


def test_onehot_rendering_has_one_channel_per_class_and_zeros_for_void():
    label_map = np.array([[0, 20], [255, 3]], dtype=np.uint8)
    control = control_tensor(label_map, VOC, mode="onehot")
    assert control.shape == (21, 2, 2)
    assert control[0, 0, 0] == 1 and control[20, 0, 1] == 1 and control[3, 1, 1] == 1
    assert control[:, 1, 0].sum() == 0
    assert torch.equal(control.sum(0), torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    assert conditioning_channels("onehot", 21) == 21 and conditioning_channels("palette") == 3
    with pytest.raises(ValueError):
        conditioning_channels("depth")


def test_resize_never_blends_class_ids():
    label_map = np.random.RandomState(0).choice([0, 7, 15], size=(37, 53)).astype(np.uint8)
    resized = resize_label_map(label_map, 64, 48)
    assert resized.shape == (48, 64)
    assert set(np.unique(resized)) <= {0, 7, 15}


def test_a_controlnet_is_only_shown_maps_it_can_know():
    check_drawable(VOC, "palette", "ade20k")  # the public ADE20K ControlNet, through the class mapping
    check_drawable(ADE20K, "palette", "ade20k", trained_on="ade20k")
    with pytest.raises(ValueError, match="trained on voc maps"):
        check_drawable(ADE20K, "palette", "voc")
    with pytest.raises(ValueError, match="trained on ade20k maps"):
        check_drawable(UINT8, "palette", "ade20k")  # uint8 values mean nothing to it
    cityscapes = custom_label_set("cityscapes", ["road", "sidewalk", "car"])
    check_drawable(cityscapes, "palette", "voc", trained_on="cityscapes")  # in its own colours
    with pytest.raises(ValueError, match="trained on cityscapes maps"):
        check_drawable(VOC, "palette", "voc", trained_on="cityscapes")  # same palette, other classes
    with pytest.raises(ValueError, match="3 classes, the ControlNet's one-hot control 21"):
        check_drawable(cityscapes, "onehot", "voc", num_classes=21)
    with pytest.raises(ValueError, match="trained on voc maps"):
        check_drawable(custom_label_set("other21", [str(i) for i in range(21)]), "onehot", "voc", 21, "voc")
