import numpy as np
import pytest
import torch

from models.decode.control import conditioning_channels, control_tensor, resize_label_map
from models.palettes import VOC_PALETTE, get_palette


def test_palette_rendering_is_the_palette_in_zero_one():
    label_map = np.array([[0, 15], [255, 12]], dtype=np.uint8)
    control = control_tensor(label_map)
    assert control.shape == (3, 2, 2) and control.dtype == torch.float32
    assert torch.allclose(control[:, 0, 1] * 255, torch.tensor(VOC_PALETTE[15], dtype=torch.float32))
    assert torch.allclose(control[:, 1, 0] * 255, torch.tensor(VOC_PALETTE[255], dtype=torch.float32))
    ade = control_tensor(label_map, palette="ade20k")
    assert torch.allclose(ade[:, 0, 1] * 255, torch.tensor(get_palette("ade20k")[15], dtype=torch.float32))


def test_onehot_rendering_has_one_channel_per_class_and_zeros_for_void():
    label_map = np.array([[0, 20], [255, 3]], dtype=np.uint8)
    control = control_tensor(label_map, mode="onehot", num_classes=21)
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
