import numpy as np
import pytest
from PIL import Image

from models.palettes import (ADE20K, ADE20K_CLASSES, ADE20K_PALETTE, VOC, VOC_CLASSES, VOC_IN_ADE20K_COLORS,
                             VOC_PALETTE, colorize, colors_to_label_map, custom_label_set, get_label_set,
                             label_map_from_pil, label_map_to_pil, label_set_from_dict)


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
    palette = VOC_IN_ADE20K_COLORS
    person = ADE20K_PALETTE[ADE20K_CLASSES.index("person")]
    assert tuple(palette[VOC_CLASSES.index("person")]) == tuple(person) == (150, 5, 61)
    assert tuple(palette[0]) == tuple(palette[255]) == (0, 0, 0)  # background and void: no ADE20K class
    assert len(ADE20K_CLASSES) == len(ADE20K_PALETTE) == 150


def test_label_sets_say_what_values_mean():
    assert (VOC.num_classes, VOC.void, ADE20K.num_classes, ADE20K.void) == (21, 255, 151, None)
    assert ADE20K.class_names[1] == "wall" and tuple(ADE20K.colors[1]) == (120, 120, 120)
    VOC.check(np.array([[0, 20, 255]], dtype=np.uint8))
    with pytest.raises(ValueError, match="class ids 21 outside 0..20"):
        VOC.check(np.array([[21]], dtype=np.uint8))
    with pytest.raises(ValueError, match="151 outside 0..150"):
        ADE20K.check(np.array([[151]], dtype=np.uint8))
    city = custom_label_set("city", ["road", "car", "sky"])
    assert label_set_from_dict(city.to_dict()).class_names == ("road", "car", "sky")
    assert label_set_from_dict({"name": "ade20k"}) is ADE20K and get_label_set("voc") is VOC
    with pytest.raises(ValueError, match="custom label set needs a name"):
        custom_label_set("voc", ["x"])


def test_label_map_pngs_take_their_sets_colours(tmp_path):
    label_map = np.array([[1, 2], [0, 150]], dtype=np.uint8)
    label_map_to_pil(label_map, ADE20K).save(tmp_path / "ade.png")
    loaded = Image.open(tmp_path / "ade.png")
    np.testing.assert_array_equal(label_map_from_pil(loaded), label_map)
    np.testing.assert_array_equal(np.array(loaded.convert("RGB")), colorize(label_map, ADE20K))


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
    with pytest.raises(ValueError, match="not in the voc colours"):
        colors_to_label_map(rgb)


def test_rgb_label_map_is_refused():
    with pytest.raises(ValueError, match="palette or gray"):
        label_map_from_pil(Image.new("RGB", (4, 4)))
