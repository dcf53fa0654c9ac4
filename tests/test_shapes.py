import json

import numpy as np
import pytest

from models.quickstart.shapes import (BACKGROUND_COLORS, CLASS_BACKGROUND, CLASS_COLORS, SHAPE_CLASS_IDS, SHAPE_COLORS,
                                      main, make_sample, write_shapes_dataset)
from models.train.data import index_split, read_split_captions


def test_samples_are_seeded():
    first, again, other = make_sample(7), make_sample(7), make_sample(8)
    assert np.array_equal(first.image, again.image) and first.caption == again.caption
    assert not np.array_equal(first.image, other.image)
    assert make_sample([0, 1, 5]).caption == make_sample([0, 1, 5]).caption


@pytest.mark.parametrize("seed", range(20))
def test_label_map_is_exact_and_caption_names_every_shape(seed):
    sample = make_sample(seed, size=64)
    assert sample.image.shape == (64, 64, 3) and sample.label_map.shape == (64, 64)
    background = sample.label_map == 0
    assert (sample.image[background] == BACKGROUND_COLORS[sample.background]).all()
    for shape in sample.shapes:
        inside = sample.label_map == SHAPE_CLASS_IDS[shape.kind]
        colours = {tuple(SHAPE_COLORS[s.color]) for s in sample.shapes if s.kind == shape.kind}
        assert inside.any()  # never hidden: bounding boxes do not overlap
        assert {tuple(c) for c in sample.image[inside]} <= colours
        assert shape.kind in sample.caption and shape.color in sample.caption
    assert sample.caption.endswith(f"on a {sample.background} background")
    assert " a o" not in sample.caption  # "an orange ..."


def test_by_class_colours_make_the_label_map_determine_the_image():
    class_rgb = np.zeros((256, 3), dtype=np.uint8)
    class_rgb[0] = BACKGROUND_COLORS[CLASS_BACKGROUND]
    for kind, class_id in SHAPE_CLASS_IDS.items():
        class_rgb[class_id] = SHAPE_COLORS[CLASS_COLORS[kind]]
    for seed in range(10):
        sample = make_sample(seed, size=48, color_mode="by_class")
        assert np.array_equal(sample.image, class_rgb[sample.label_map])
    with pytest.raises(ValueError, match="color_mode"):
        make_sample(0, color_mode="rainbow")


def test_written_layout_is_what_training_reads(tmp_path):
    write_shapes_dataset(tmp_path, {"train": 5, "val": 2}, size=32, seed=3)
    train = index_split(tmp_path, "train")
    assert len(train.pairs) == 5 and not train.problems
    assert len(index_split(tmp_path, "val").pairs) == 2
    captions = read_split_captions(tmp_path, "train")
    assert captions["shape_00000.png"] == make_sample([3, 0, 0], size=32).caption
    assert main(["--data_root", str(tmp_path / "cli"), "--train", "2", "--val", "1", "--size", "32"]) == 0
    prompts = json.loads((tmp_path / "cli/segmented_images/train/prompts.json").read_text())
    assert sorted(prompts) == ["shape_00000.png", "shape_00001.png"]
