"""python -m models.train.prepare_data: VOC 2012 and ADE20K trees and plain folders into the training layout."""

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import process_input
from models.layout import LABEL_SET_FILE
from models.palettes import ADE20K, VOC_PALETTE, VOID_LABEL
from models.train import prepare_data
from tests.conftest import DATA, REPO, VOC_IMAGES, VOC_MASKS

VOC_IDS = sorted(path.stem for path in VOC_IMAGES.glob("*.jpg"))
TRAIN_IDS, VAL_IDS = VOC_IDS[:6], VOC_IDS[6:10]
ADE_SAMPLES = DATA / "ade-samples"


def make_voc_tree(root: Path, train_ids: list[str], val_ids: list[str]) -> Path:
    """A VOCdevkit/VOC2012 tree holding the given ids and their split lists; returns VOCdevkit."""
    voc = root / "VOCdevkit" / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    for folder in (voc / "JPEGImages", voc / "SegmentationClass", lists):
        folder.mkdir(parents=True, exist_ok=True)
    for image_id in train_ids + val_ids:
        shutil.copy(VOC_IMAGES / f"{image_id}.jpg", voc / "JPEGImages")
        shutil.copy(VOC_MASKS / f"{image_id}.png", voc / "SegmentationClass")
    for name, ids in (("train", train_ids), ("val", val_ids), ("trainval", train_ids + val_ids)):
        (lists / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root / "VOCdevkit"


def snapshot(folder: Path) -> dict:
    """Content hash, modification time and inode of every file under ``folder``."""
    return {path.relative_to(folder).as_posix(): (hashlib.sha256(path.read_bytes()).hexdigest(),
                                                  path.stat().st_mtime_ns, path.stat().st_ino)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def run(*args) -> tuple[int, str]:
    """prepare_data.main in-process; its status and what it printed to stdout."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        status = prepare_data.main([str(arg) for arg in args])
    return status, output.getvalue()


def names(folder: Path, pattern: str = "*.jpg") -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob(pattern))


@pytest.fixture(scope="module")
def voc_gt(tiny_config, tmp_path_factory):
    """A VOC tree prepared once with ground-truth label maps (void -> the nearest label)."""
    root = tmp_path_factory.mktemp("voc")
    devkit = make_voc_tree(root, TRAIN_IDS, VAL_IDS)
    before = snapshot(devkit)
    status, output = run("--voc_root", devkit, "--data_root", root / "data", "--config_path",
                         tiny_config, "--val_fraction", 0.2, "--device", "cpu", "--label_source", "gt")
    assert status == 0
    return devkit, root / "data", before, output


def test_voc_splits_come_from_the_lists(voc_gt):
    _, data, _, output = voc_gt
    images = {split: names(data / "original_images" / split) for split in prepare_data.SPLITS}
    assert sorted(images["train"] + images["val"]) == [f"{i}.jpg" for i in TRAIN_IDS]
    assert len(images["val"]) == round(0.2 * len(TRAIN_IDS))
    assert images["test"] == [f"{i}.jpg" for i in VAL_IDS]
    assert "train: images 5 (this run: linked 5, label maps 5, captions 5)" in output
    assert "val: images 1 (this run: linked 1, label maps 1, captions 1)" in output
    assert "test: images 4 (this run: linked 4, label maps 4, captions 4)" in output


def test_images_are_hard_links_of_the_sources(voc_gt):
    devkit, data, _, _ = voc_gt
    for path in (data / "original_images").rglob("*.jpg"):
        assert os.path.samefile(path, devkit / "VOC2012" / "JPEGImages" / path.name)


def label_set_names(data: Path) -> dict[str, str]:
    """The label set each split's label-map folder says it holds."""
    return {split: json.loads((data / "segmented_images" / split / LABEL_SET_FILE).read_text())["name"]
            for split in prepare_data.SPLITS}


def test_ground_truth_label_maps_are_the_masks_with_void_given_the_nearest_label(voc_gt):
    _, data, _, _ = voc_gt
    assert label_set_names(data) == {split: "voc" for split in prepare_data.SPLITS}
    rng = np.random.default_rng(0)
    void_seen = 0
    for image in (data / "original_images").rglob("*.jpg"):
        split = image.parent.name
        label_map = Image.open(data / "segmented_images" / split / f"{image.stem}.png")
        assert label_map.mode == "P"
        assert np.array_equal(np.array(label_map.getpalette()).reshape(-1, 3), VOC_PALETTE)
        label_map, mask = np.array(label_map), np.array(Image.open(VOC_MASKS / f"{image.stem}.png"))
        void = mask == VOID_LABEL
        void_seen += int(void.sum())
        assert np.array_equal(label_map[~void], mask[~void]) and (label_map != VOID_LABEL).all()
        # brute force on sampled void pixels: each took the label of a labelled pixel at the least distance
        labelled = np.argwhere(~void)
        for y, x in np.argwhere(void)[rng.choice(int(void.sum()), size=min(25, int(void.sum())), replace=False)]:
            distances = ((labelled - (y, x)) ** 2).sum(axis=1)
            nearest = labelled[distances == distances.min()]
            assert label_map[y, x] in {mask[ny, nx] for ny, nx in nearest}
    assert void_seen > 0  # the masks do have void pixels to fill


def test_voc_trains_on_predicted_maps_unless_asked_and_void_can_be_background(tiny_config, tmp_path):
    devkit = make_voc_tree(tmp_path, TRAIN_IDS[:2], VAL_IDS[:1])
    status, _ = run("--voc_root", devkit, "--data_root", tmp_path / "predicted", "--config_path", tiny_config,
                    "--val_fraction", 0, "--device", "cpu")
    assert status == 0  # the default: what DeepLabV3+ gives, as decoding will see
    assert json.loads((tmp_path / "predicted" / prepare_data.MANIFEST_FILE).read_text())["label_source"] == "predicted"
    status, _ = run("--voc_root", devkit, "--data_root", tmp_path / "background", "--config_path", tiny_config,
                    "--val_fraction", 0, "--device", "cpu", "--label_source", "gt", "--void", "background")
    assert status == 0
    for image in (tmp_path / "background" / "original_images").rglob("*.jpg"):
        label_map = np.array(Image.open(tmp_path / "background" / "segmented_images" / image.parent.name
                                        / f"{image.stem}.png"))
        mask = np.array(Image.open(VOC_MASKS / f"{image.stem}.png"))
        assert np.array_equal(label_map, np.where(mask == VOID_LABEL, 0, mask))


def test_prompts_json_has_one_caption_per_image_of_its_split(voc_gt):
    _, data, _, _ = voc_gt
    for split in prepare_data.SPLITS:
        captions = json.loads((data / "segmented_images" / split / "prompts.json").read_text())
        assert sorted(captions) == names(data / "original_images" / split)
        assert all(isinstance(caption, str) and caption for caption in captions.values())


def test_rerun_changes_nothing_and_the_source_is_untouched(voc_gt, tiny_config, monkeypatch):
    devkit, data, source_before, _ = voc_gt
    layout_before = snapshot(data)

    def no_captioner(*args, **kwargs):
        raise AssertionError("BLIP was loaded although every caption exists")

    monkeypatch.setattr(prepare_data.BlipCaptioner, "from_config", no_captioner)
    status, output = run("--voc_root", devkit, "--data_root", data, "--config_path", tiny_config,
                         "--val_fraction", 0.2, "--device", "cpu", "--label_source", "gt")
    assert status == 0
    assert "train: images 5 (this run: linked 0, label maps 0, captions 0)" in output
    assert snapshot(data) == layout_before
    assert snapshot(devkit) == source_before


def test_other_settings_on_the_same_data_root_are_refused(voc_gt, tiny_config, capsys):
    devkit, data, _, _ = voc_gt
    layout_before = snapshot(data)
    status, _ = run("--voc_root", devkit, "--data_root", data, "--config_path", tiny_config,
                    "--val_fraction", 0.2, "--label_source", "predicted")
    assert status == 2
    assert "label_source 'gt' -> 'predicted'" in capsys.readouterr().err
    assert snapshot(data) == layout_before


def test_void_can_be_kept_and_images_copied(tiny_config, tmp_path):
    devkit = make_voc_tree(tmp_path, TRAIN_IDS[:2], VAL_IDS[:1])
    status, _ = run("--voc_root", devkit / "VOC2012", "--data_root", tmp_path / "data", "--label_source", "gt",
                    "--config_path", tiny_config, "--void", "keep", "--link", "copy",
                    "--val_fraction", 0, "--device", "cpu")
    assert status == 0
    for image in (tmp_path / "data" / "original_images").rglob("*.jpg"):
        source = devkit / "VOC2012" / "JPEGImages" / image.name
        assert not os.path.samefile(image, source) and image.read_bytes() == source.read_bytes()
        label_map = np.array(Image.open(tmp_path / "data" / "segmented_images" / image.parent.name
                                        / f"{image.stem}.png"))
        assert np.array_equal(label_map, np.array(Image.open(VOC_MASKS / f"{image.stem}.png")))
    assert not (tmp_path / "data" / "original_images" / "val").exists()


def test_predicted_layout_is_what_process_input_writes(tiny_config, tmp_path):
    devkit = make_voc_tree(tmp_path, TRAIN_IDS[:3], VAL_IDS[:2])
    data = tmp_path / "data"
    status, _ = run("--voc_root", tmp_path, "--data_root", data, "--config_path", tiny_config,
                    "--label_source", "predicted", "--link", "symbolic", "--val_fraction", 0.34,
                    "--device", "cpu")
    assert status == 0
    for image in (data / "original_images").rglob("*.jpg"):
        assert image.is_symlink()
        assert image.resolve() == (devkit / "VOC2012" / "JPEGImages" / image.name).resolve()
    for split in prepare_data.SPLITS:
        reference = tmp_path / "reference" / split
        assert process_input.main(["--config_path", str(tiny_config), "--input_dir",
                                   str(data / "original_images" / split), "--output_dir",
                                   str(reference), "--device", "cpu", "--format", "png"]) == 0
        ours = data / "segmented_images" / split
        assert names(ours, "*") == names(reference, "*")
        for name in names(reference, "*.png"):
            assert np.array_equal(np.array(Image.open(ours / name)), np.array(Image.open(reference / name)))
        assert (ours / "prompts.json").read_text() == (reference / "prompts.json").read_text()


def test_plain_folder_gets_a_seeded_split_and_predicted_maps(tiny_config, tmp_path):
    image_dir = tmp_path / "photos"
    for index, photo in enumerate(sorted(VOC_IMAGES.glob("*.jpg"))[:10]):
        (image_dir / "ab"[index % 2]).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, image_dir / "ab"[index % 2] / photo.name)
    (image_dir / "notes.txt").write_text("not an image")
    before = snapshot(image_dir)
    data = tmp_path / "data"
    status, output = run("--image_dir", image_dir, "--data_root", data, "--config_path", tiny_config,
                         "--split_fractions", 0.6, 0.2, 0.2, "--seed", 3, "--device", "cpu")
    assert status == 0
    expected = prepare_data.assign_splits(names(image_dir), (0.6, 0.2, 0.2), seed=3)
    assert [len(expected[split]) for split in prepare_data.SPLITS] == [6, 2, 2]
    for split in prepare_data.SPLITS:
        assert names(data / "original_images" / split) == expected[split]
        captions = json.loads((data / "segmented_images" / split / "prompts.json").read_text())
        assert sorted(captions) == expected[split]
        for relpath in expected[split]:
            label_map_file = (data / "segmented_images" / split / relpath).with_suffix(".png")
            label_map = np.array(Image.open(label_map_file))
            assert label_map.shape == Image.open(image_dir / relpath).size[::-1]
            assert label_map.max() < 21
    assert "test: images 2 (this run: linked 2, label maps 2, captions 2)" in output
    assert snapshot(image_dir) == before
    layout = snapshot(data)
    assert run("--image_dir", image_dir, "--data_root", data, "--config_path", tiny_config,
               "--split_fractions", 0.6, 0.2, 0.2, "--seed", 3, "--device", "cpu")[0] == 0
    assert snapshot(data) == layout


def test_assign_splits_is_seeded_exact_and_independent_of_order():
    names_ = [f"img{i:03d}.jpg" for i in range(101)]
    splits = prepare_data.assign_splits(names_, (0.8, 0.1, 0.1), seed=0)
    assert [len(splits[s]) for s in prepare_data.SPLITS] == [81, 10, 10]
    assert sorted(sum(splits.values(), [])) == names_
    assert prepare_data.assign_splits(names_[::-1], (0.8, 0.1, 0.1), seed=0) == splits
    assert prepare_data.assign_splits(names_, (0.8, 0.1, 0.1), seed=1) != splits


def test_missing_and_unreadable_files_are_listed_and_the_rest_prepared(tiny_config, tmp_path):
    good, missing, corrupt, bad_mask, no_mask = VOC_IDS[:2], VOC_IDS[2], VOC_IDS[3], VOC_IDS[4], VOC_IDS[5]
    devkit = make_voc_tree(tmp_path, good + [corrupt, bad_mask, no_mask], [])
    voc = devkit / "VOC2012"
    with open(voc / "ImageSets" / "Segmentation" / "val.txt", "w") as handle:
        handle.write(f"{missing}\n")
    (voc / "JPEGImages" / f"{corrupt}.jpg").write_bytes(b"not a jpeg")
    Image.new("P", (7, 5)).save(voc / "SegmentationClass" / f"{bad_mask}.png")
    (voc / "SegmentationClass" / f"{no_mask}.png").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "models.train.prepare_data", "--voc_root", devkit, "--data_root",
         tmp_path / "data", "--config_path", tiny_config, "--val_fraction", "0", "--device", "cpu",
         "--label_source", "gt"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4
    assert any(f"{missing}.jpg: file not found" in line for line in errors)
    assert any(f"{corrupt}.jpg: not an image" in line for line in errors)
    assert any(f"{bad_mask}.png: mask is 7x5, its image" in line for line in errors)
    assert any(f"{no_mask}.png: ground-truth mask not found" in line for line in errors)
    assert names(tmp_path / "data" / "original_images") == [f"train/{i}.jpg" for i in good]
    assert "train: images 2 (this run: linked 2, label maps 2, captions 2)" in result.stdout
    assert "failed 4" in result.stdout


def test_hard_links_fall_back_to_copies_across_file_systems(tmp_path, monkeypatch):
    source = tmp_path / "a.jpg"
    source.write_bytes(b"photo bytes")

    def cross_device(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(prepare_data.os, "link", cross_device)
    assert prepare_data.link_file(source, tmp_path / "out" / "a.jpg", "hard") == "copy"
    assert (tmp_path / "out" / "a.jpg").read_bytes() == b"photo bytes"
    assert not os.path.samefile(source, tmp_path / "out" / "a.jpg")


def test_an_image_already_in_another_split_is_a_conflict(tmp_path):
    (tmp_path / "original_images" / "train").mkdir(parents=True)
    (tmp_path / "original_images" / "train" / "a.jpg").write_bytes(b"x")
    items = [prepare_data.SourceItem("val", "a.jpg", Path("/src/a.jpg")),
             prepare_data.SourceItem("train", "a.jpg", Path("/src/a.jpg"))]
    conflicts = prepare_data.find_split_conflicts(items, tmp_path)
    assert list(conflicts) == ["/src/a.jpg"]
    assert "already in original_images/train/" in conflicts["/src/a.jpg"]


def test_an_id_in_both_voc_lists_goes_to_test_only(tmp_path):
    devkit = make_voc_tree(tmp_path, VOC_IDS[:4], VOC_IDS[3:5])
    plan = prepare_data.labelled_plan(prepare_data.VOC_SOURCE, prepare_data.find_voc_root(devkit), 0.25,
                                      seed=0, with_masks=True)
    splits = {item.relpath: item.split for item in plan.items}
    assert len(plan.items) == 5 and splits[f"{VOC_IDS[3]}.jpg"] == "test"
    assert sorted(splits.values()) == ["test", "test", "train", "train", "val"]
    assert plan.warnings and "both train.txt and val.txt" in plan.warnings[0]
    assert all(item.mask == item.image.parent.parent / "SegmentationClass" / f"{item.image.stem}.png"
               for item in plan.items)


def test_a_data_root_inside_the_source_is_refused(tiny_config, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    status, _ = run("--image_dir", tmp_path / "photos", "--data_root", tmp_path / "photos" / "data",
                    "--config_path", tiny_config)
    assert status == 2
    assert "is inside the source" in capsys.readouterr().err
    assert not (tmp_path / "photos" / "data").exists()


def test_ground_truth_needs_voc_and_a_folder_needs_images(tiny_config, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.txt").write_text("no images here")
    common = ["--image_dir", tmp_path / "photos", "--data_root", tmp_path / "data",
              "--config_path", tiny_config]
    assert run(*common, "--label_source", "gt")[0] == 2
    assert "--label_source gt needs --voc_root" in capsys.readouterr().err
    assert run(*common)[0] == 2
    assert "found no images to prepare" in capsys.readouterr().err
    assert run(*common, "--split_fractions", 0.5, 0.3, 0.3)[0] == 2
    assert "sum to 1" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def ade_annotations() -> dict[str, np.ndarray]:
    """Annotations by "part/stem": the two real ones, and variants of them that reach class 150."""
    train, val = (np.array(Image.open(ADE_SAMPLES / "annotations" / f"{stem}.png"))
                  for stem in ("ADE_train_00000970", "ADE_val_00000001"))
    last_class = np.fliplr(train).copy()
    last_class[:16, :16] = 150  # the last class must survive as it is
    return {"training/ADE_train_00000970": train, "training/ADE_train_00000971": np.flipud(val),
            "training/ADE_train_00000972": last_class, "training/ADE_train_00000973": np.flipud(train),
            "validation/ADE_val_00000001": val}


def make_ade_tree(root: Path, annotations: dict[str, np.ndarray]) -> Path:
    """An ADEChallengeData2016 tree under ``root``: a JPEG and an 8-bit gray annotation per entry
    (the real photo for ADE_val_00000001, solid colours for the rest); returns the tree."""
    ade = root / "ADEChallengeData2016"
    for index, (name, annotation) in enumerate(sorted(annotations.items())):
        part, stem = name.split("/")
        for folder in ("images", "annotations"):
            (ade / folder / part).mkdir(parents=True, exist_ok=True)
        photo = ADE_SAMPLES / "images" / f"{stem}.jpg"
        if photo.exists():
            shutil.copy(photo, ade / "images" / part)
        else:
            Image.new("RGB", annotation.shape[::-1], (50 * index, 120, 200)).save(ade / "images" / part / f"{stem}.jpg")
        Image.fromarray(annotation).save(ade / "annotations" / part / f"{stem}.png")
    (ade / "sceneCategories.txt").write_text("ADE_val_00000001 bathroom\n")  # not an image: ignored
    return ade


@pytest.fixture(scope="module")
def ade_gt(tiny_config, tmp_path_factory):
    """An ADEChallengeData2016 tree (given by its parent) prepared once with its annotations."""
    root = tmp_path_factory.mktemp("ade")
    ade = make_ade_tree(root, ade_annotations())
    before = snapshot(ade)
    status, output = run("--ade_root", root, "--data_root", root / "data", "--config_path", tiny_config,
                         "--val_fraction", 0.25, "--device", "cpu")
    assert status == 0
    return ade, root / "data", before, output


def test_ade_splits_are_training_less_val_and_validation_as_test(ade_gt):
    ade, data, _, output = ade_gt
    images = {split: names(data / "original_images" / split) for split in prepare_data.SPLITS}
    assert sorted(images["train"] + images["val"]) == names(ade / "images" / "training")
    assert len(images["val"]) == 1 and images["test"] == ["ADE_val_00000001.jpg"]
    for path in (data / "original_images").rglob("*.jpg"):
        assert os.path.samefile(path, ade / "images" / ("validation" if path.parent.name == "test" else "training")
                                / path.name)
    assert "train: images 3 (this run: linked 3, label maps 3, captions 3)" in output
    assert "test: images 1 (this run: linked 1, label maps 1, captions 1)" in output
    settings = json.loads((data / prepare_data.MANIFEST_FILE).read_text())
    assert settings["source"] == "ade20k" and settings["source_dir"] == str(ade.resolve())
    assert "void" not in settings  # ADE20K has none to map


def test_ade_label_maps_are_the_annotations_exactly_in_ade20k_colours(ade_gt):
    _, data, _, _ = ade_gt
    annotations = {name.split("/")[1]: annotation for name, annotation in ade_annotations().items()}
    values = set()
    for image in (data / "original_images").rglob("*.jpg"):
        label_map = Image.open(data / "segmented_images" / image.parent.name / f"{image.stem}.png")
        assert label_map.mode == "P"
        assert np.array_equal(np.array(label_map.getpalette()).reshape(-1, 3), ADE20K.colors)
        assert np.array_equal(np.array(label_map), annotations[image.stem])
        values |= set(np.unique(np.array(label_map)).tolist())
    assert {0, 1, 150} <= values  # "other", wall and the last class, all kept as they are
    assert label_set_names(data) == {split: "ade20k" for split in prepare_data.SPLITS}


def test_ade_captions_are_written_and_a_rerun_does_nothing(ade_gt, tiny_config, monkeypatch):
    ade, data, source_before, _ = ade_gt
    for split in prepare_data.SPLITS:
        captions = json.loads((data / "segmented_images" / split / "prompts.json").read_text())
        assert sorted(captions) == names(data / "original_images" / split)
        assert all(isinstance(caption, str) and caption for caption in captions.values())
    layout_before = snapshot(data)

    def no_captioner(*args, **kwargs):
        raise AssertionError("BLIP was loaded although every caption exists")

    monkeypatch.setattr(prepare_data.BlipCaptioner, "from_config", no_captioner)
    status, output = run("--ade_root", ade, "--data_root", data, "--config_path", tiny_config,
                         "--val_fraction", 0.25, "--device", "cpu")  # the tree itself this time
    assert status == 0
    assert "train: images 3 (this run: linked 0, label maps 0, captions 0)" in output
    assert snapshot(data) == layout_before
    assert snapshot(ade) == source_before


def test_bad_ade_annotations_are_listed_and_the_rest_prepared(tiny_config, tmp_path, capsys):
    annotations = ade_annotations()
    annotations["training/ADE_train_00000972"][0, 0] = 151  # no such class
    ade = make_ade_tree(tmp_path, annotations)
    Image.new("L", (7, 5)).save(ade / "annotations" / "training" / "ADE_train_00000971.png")
    (ade / "annotations" / "training" / "ADE_train_00000973.png").unlink()
    status, output = run("--ade_root", ade, "--data_root", tmp_path / "data", "--config_path", tiny_config,
                         "--val_fraction", 0, "--device", "cpu")
    assert status == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3
    assert any("ADE_train_00000971.png: mask is 7x5, its image 683x512" in line for line in errors)
    assert any("ADE_train_00000972.png: class ids 151 outside 0..150 of the ade20k label set" in line
               for line in errors)
    assert any("ADE_train_00000973.png: ground-truth mask not found" in line for line in errors)
    assert names(tmp_path / "data" / "original_images") == ["test/ADE_val_00000001.jpg",
                                                            "train/ADE_train_00000970.jpg"]
    assert "train: images 1 (this run: linked 1, label maps 1, captions 1)" in output
    assert "failed 3" in output


def test_ade_flags_are_checked_before_anything_is_written(tiny_config, tmp_path, capsys):
    ade = make_ade_tree(tmp_path, {"training/ADE_train_00000001": np.zeros((8, 8), dtype=np.uint8),
                                   "validation/ADE_val_00000002": np.zeros((8, 8), dtype=np.uint8)})
    common = ["--data_root", tmp_path / "data", "--config_path", tiny_config]
    assert run("--ade_root", ade, *common, "--void", "keep")[0] == 2
    assert "--void applies to --voc_root only" in capsys.readouterr().err
    assert run("--ade_root", tmp_path / "images", *common)[0] == 2
    assert "no images/training/ and images/validation/ found" in capsys.readouterr().err
    assert run("--ade_root", ade, "--data_root", ade / "data", "--config_path", tiny_config)[0] == 2
    assert "is inside the source" in capsys.readouterr().err
    shutil.rmtree(ade / "annotations")
    assert run("--ade_root", ade, *common)[0] == 2
    assert "use --label_source predicted" in capsys.readouterr().err
    assert not (tmp_path / "data").exists() and not (ade / "data").exists()


def test_ade_predicted_label_maps_need_no_annotations(tiny_config, tmp_path):
    ade = make_ade_tree(tmp_path, {"training/ADE_train_00000001": np.zeros((48, 64), dtype=np.uint8),
                                   "validation/ADE_val_00000002": np.zeros((40, 56), dtype=np.uint8)})
    shutil.rmtree(ade / "annotations")
    data = tmp_path / "data"
    status, output = run("--ade_root", ade, "--data_root", data, "--config_path", tiny_config,
                         "--label_source", "predicted", "--val_fraction", 0, "--device", "cpu")
    assert status == 0
    assert "test: images 1 (this run: linked 1, label maps 1, captions 1)" in output
    for split, stem, size in (("train", "ADE_train_00000001", (64, 48)), ("test", "ADE_val_00000002", (56, 40))):
        assert Image.open(data / "segmented_images" / split / f"{stem}.png").size == size
        assert json.loads((data / "segmented_images" / split / LABEL_SET_FILE).read_text())["name"] == "voc"
    assert json.loads((data / prepare_data.MANIFEST_FILE).read_text())["label_source"] == "predicted"
