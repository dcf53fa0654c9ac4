"""The public-weights path: a transformers scene parser writes ADE20K maps that carry their label set,
and they are drawn exactly as the public segmentation ControlNets' annotator drew their training maps."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import process_decoding
import process_input
from models.bitstream import read_sem
from models.bitstream.__main__ import main as bitstream_main
from models.config import load_config
from models.decode.decoder import ControlNetDecoder
from models.encode import scaling
from models.encode.segmentation import CheckpointError, load_segmenter
from models.encode.transformers_segmenter import model_label_set
from models.palettes import ADE20K, ADE20K_CLASSES, ADE20K_PALETTE, VOC, VOC_CLASSES
from models.tiny.components import build_tiny_components
from tests.conftest import VOC_IMAGES


@pytest.fixture(scope="module")
def ade_config(tmp_path_factory):
    """Tiny components whose config encodes with the tiny SegFormer (ADE20K) and decodes in ADE20K colours."""
    return build_tiny_components(tmp_path_factory.mktemp("tiny-ade"), seed=0, segmenter="transformers")


PHOTOS = sorted(VOC_IMAGES.glob("*.jpg"))[:4]


@pytest.fixture(scope="module")
def encoded(ade_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    (root / "photos").mkdir()
    for photo in PHOTOS:
        shutil.copy(photo, root / "photos" / photo.name)
    status = process_input.main(["--config_path", str(ade_config), "--input_dir", str(root / "photos"),
                                 "--output_dir", str(root / "encoded"), "--device", "cpu"])
    assert status == 0
    return root / "encoded"


def test_the_scene_parser_writes_ade20k_maps_that_say_so(encoded, capsys):
    assert json.loads((encoded / "label_set.json").read_text())["name"] == "ade20k"
    capsys.readouterr()
    assert bitstream_main(["info", str(encoded / f"{PHOTOS[0].stem}.sem")]) == 0
    assert json.loads(capsys.readouterr().out)["label_set"] == "ade20k"
    for photo in PHOTOS:
        png = Image.open(encoded / f"{photo.stem}.png")
        label_map = np.array(png)
        assert label_map.shape == np.array(Image.open(photo)).shape[:2]
        assert 1 <= label_map.min() and label_map.max() <= 150  # model class k is value k + 1
        np.testing.assert_array_equal(np.array(png.convert("RGB")), ADE20K.colors[label_map])
        code = read_sem(encoded / f"{photo.stem}.sem")
        assert code.label_set == "ade20k" and np.array_equal(code.label_map, label_map)


def test_control_images_are_the_annotators_colours_pixel_by_pixel(ade_config):
    decoder = ControlNetDecoder.from_config(load_config(ade_config))
    assert decoder.control_spec.palette == "ade20k"
    label_map = np.array([[1, 2, 3, 7], [13, 150, 0, 21]], dtype=np.uint8)  # wall building sky road / ... other car
    control = decoder.control_image(label_map, (4, 2), ADE20K)  # (3, 2, 4) in [0, 1]
    drawn = (control * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    expected = np.array([[ADE20K_PALETTE[v - 1] if v else (0, 0, 0) for v in row] for row in label_map])
    np.testing.assert_array_equal(drawn, expected)
    assert tuple(drawn[0, 0]) == (120, 120, 120) and tuple(drawn[0, 2]) == (6, 230, 230)  # wall, sky
    assert tuple(drawn[0, 3]) == (140, 140, 140) and tuple(drawn[1, 1]) == (92, 0, 255)  # road, the last class
    voc = decoder.control_image(np.array([[0, 15]], dtype=np.uint8), (2, 1), VOC)  # VOC maps: the mapping
    assert tuple((voc[:, 0, 1] * 255).round().int().tolist()) == (150, 5, 61)  # person
    assert tuple((voc[:, 0, 0] * 255).round().int().tolist()) == (0, 0, 0)  # background: no ADE20K class


def test_ade20k_codes_decode_end_to_end(ade_config, encoded, tmp_path):
    inputs = tmp_path / "inputs"
    shutil.copytree(encoded, inputs, ignore=shutil.ignore_patterns("*.png"))  # .sem files and the sidecars
    status = process_decoding.main(["--config_path", str(ade_config), "--input_path", str(inputs),
                                    "--output_dir", str(tmp_path / "decoded"), "--num_inference_steps", "2",
                                    "--device", "cpu"])
    assert status == 0
    manifest = json.loads((tmp_path / "decoded" / "manifest.json").read_text())
    assert {entry["label_set"] for entry in manifest["images"].values()} == {"ade20k"}
    assert len(manifest["images"]) == len(PHOTOS)


def test_bounded_inference_gives_full_size_maps(ade_config):
    config = load_config(ade_config)
    config.segmentation.inference_size = 32
    segmenter = load_segmenter(config.segmentation)
    photo = np.array(Image.open(PHOTOS[0]))  # 500 x 281
    big = np.array(Image.fromarray(photo).resize((1200, 674)))
    label_maps = segmenter.predict([big, photo, big])
    assert [m.shape for m in label_maps] == [(674, 1200), (281, 500), (674, 1200)]
    assert np.array_equal(label_maps[0], label_maps[2])  # a map never depends on its batch
    assert scaling.inference_shape(3000, 4000, 512) == (512, 683)
    assert scaling.inference_shape(100, 4000, 512) == (512, 2048)  # long side at most 4x the short


def test_logits_to_labels_in_strips_equals_one_interpolation(monkeypatch):
    logits = torch.randn(150, 13, 17, generator=torch.Generator().manual_seed(0))
    whole = F.interpolate(logits[None], size=(203, 141), mode="bilinear", align_corners=False)[0].argmax(0)
    monkeypatch.setattr(scaling, "STRIP_BYTES", 4 * 150 * 141 * 5)  # strips of 5 rows
    np.testing.assert_array_equal(scaling.labels_from_logits(logits, 203, 141), whole.numpy())


def test_a_too_small_inference_size_is_refused(ade_config):
    config = load_config(ade_config)
    config.segmentation.inference_size = 8
    with pytest.raises(CheckpointError, match="inference_size"):
        load_segmenter(config.segmentation)


def test_a_processor_that_changes_the_size_is_an_error(ade_config):
    config = load_config(ade_config)
    config.segmentation.inference_size = 32
    segmenter = load_segmenter(config.segmentation)
    processor = segmenter.processor
    segmenter.processor = lambda images, **options: SimpleNamespace(
        pixel_values=processor(images=images, **options).pixel_values[..., :16, :16])  # a centre crop, say
    with pytest.raises(ValueError, match="do_center_crop"):
        segmenter.predict([np.array(Image.open(PHOTOS[0]))])


def test_models_of_the_built_in_sets_write_them_and_others_bring_their_own_class_names():
    ade = "nvidia/segformer-b5-finetuned-ade-640-640"
    assert model_label_set(dict(enumerate(ADE20K_CLASSES)), ade) == (ADE20K, 1)
    assert model_label_set(dict(enumerate(("background",) + ADE20K_CLASSES)), ade) == (ADE20K, 0)
    assert model_label_set(dict(enumerate(VOC_CLASSES)), "a/deeplab-voc") == (VOC, 0)
    cityscapes, offset = model_label_set({0: "road", 1: "sidewalk", 2: "car"},
                                         "nvidia/segformer-b0-finetuned-cityscapes")
    assert offset == 0 and cityscapes.name == "segformer-b0-finetuned-cityscapes"
    assert model_label_set({0: "a", 1: "b"}, "models/voc/")[0].name == "voc-classes"  # never a built-in name
    assert cityscapes.class_names == ("road", "sidewalk", "car")


def test_encoding_into_a_folder_of_another_label_set_is_refused_unless_overwriting(ade_config, encoded, tmp_path,
                                                                                  capsys):
    output = tmp_path / "voc-encoded"
    shutil.copytree(encoded, output)
    (output / "label_set.json").write_text(json.dumps(VOC.to_dict()))  # an earlier run with DeepLabV3+
    for photo in PHOTOS[:2]:
        (output / f"{photo.stem}.sem").unlink()  # two images left to do
    arguments = ["--config_path", str(ade_config), "--input_dir", str(encoded.parent / "photos"),
                 "--output_dir", str(output), "--device", "cpu"]
    assert process_input.main(arguments) == 2
    assert "holds voc label maps" in capsys.readouterr().err
    assert json.loads((output / "label_set.json").read_text())["name"] == "voc"  # left as it was
    assert not (output / f"{PHOTOS[0].stem}.sem").exists()
    assert process_input.main(arguments + ["--overwrite"]) == 0
    assert json.loads((output / "label_set.json").read_text())["name"] == "ade20k"
    assert read_sem(output / f"{PHOTOS[0].stem}.sem").label_set == "ade20k"
