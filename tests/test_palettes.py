import numpy as np
import pytest
from PIL import Image

from models.palettes import (ADE20K_CLASSES, ADE20K_PALETTE, VOC_CLASSES, VOC_PALETTE, colorize, colors_to_label_map,
                             get_palette, label_map_from_pil, label_map_to_pil)


def test_voc_palette_known_colours():
    # Colours from the PASCAL VOC devkit's colour map.
    assert tuple(VOC_PALETTE[0]) == (0, 0, 0)
    assert tuple(VOC_PALETTE[1]) == (128, 0, 0)  # aeroplane
    assert tuple(VOC_PALETTE[12]) == (64, 0, 128)  # dog
    assert tuple(VOC_PALETTE[15]) == (192, 128, 128)  # person
    assert tuple(VOC_PALETTE[20]) == (0, 64, 128)  # tvmonitor
    assert tuple(VOC_PALETTE[255]) == (224, 224, 192)  # void
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[15] == "person"


def test_voc_palette_matches_real_masks():
    from tests.conftest import VOC_MASKS

    mask = Image.open(sorted(VOC_MASKS.glob("*.png"))[0])
    file_palette = np.array(mask.getpalette()[: 256 * 3], dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(file_palette, VOC_PALETTE)


def test_ade20k_mapping_uses_matching_classes():
    palette = get_palette("ade20k")
    person = ADE20K_PALETTE[ADE20K_CLASSES.index("person")]
    assert tuple(palette[VOC_CLASSES.index("person")]) == tuple(person) == (150, 5, 61)
    assert tuple(palette[0]) == tuple(ADE20K_PALETTE[ADE20K_CLASSES.index("wall")])
    assert len(ADE20K_CLASSES) == len(ADE20K_PALETTE) == 150


def test_label_map_png_round_trip(tmp_path):
    label_map = np.random.RandomState(0).randint(0, 21, (17, 23)).astype(np.uint8)
    label_map[0, 0] = 255
    label_map_to_pil(label_map).save(tmp_path / "m.png")
    loaded = Image.open(tmp_path / "m.png")
    assert loaded.mode == "P"
    np.testing.assert_array_equal(label_map_from_pil(loaded), label_map)
    np.testing.assert_array_equal(np.array(loaded.convert("RGB")), colorize(label_map))


def test_colour_image_inverts_to_ids_and_rejects_unknown_colours():
    label_map = np.arange(21, dtype=np.uint8).reshape(3, 7)
    np.testing.assert_array_equal(colors_to_label_map(colorize(label_map)), label_map)
    rgb = colorize(label_map)
    rgb[0, 0] = (1, 2, 3)
    with pytest.raises(ValueError, match="not in the voc palette"):
        colors_to_label_map(rgb)


def test_rgb_label_map_is_refused():
    with pytest.raises(ValueError, match="palette or gray"):
        label_map_from_pil(Image.new("RGB", (4, 4)))
