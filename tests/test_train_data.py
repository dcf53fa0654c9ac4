import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.config import Config
from models.palettes import colorize, label_map_to_pil
from models.train.data import (DataError, DecoderDataModule, EndlessShardSampler, LabelMapDataset, SampleOptions,
                               index_split, resize_crop_flip)


def _write_pair(root: Path, split: str, rel: str, size=(40, 30), label_size=None, seed=0) -> np.ndarray:
    """An image that is its label map drawn in VOC colours (so alignment is checkable)."""
    rng = np.random.default_rng(seed)
    label_map = np.zeros(size[::-1], dtype=np.uint8)
    label_map[rng.integers(0, size[1] // 2):, rng.integers(0, size[0] // 2):] = rng.integers(1, 21)
    image_path = root / "original_images" / split / rel
    image_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(colorize(label_map)).save(image_path)
    label_path = (root / "segmented_images" / split / rel).with_suffix(".png")
    label_path.parent.mkdir(parents=True, exist_ok=True)
    label_image = label_map_to_pil(label_map)
    (label_image.resize(label_size, Image.NEAREST) if label_size else label_image).save(label_path)
    return label_map


def test_pairs_matched_by_relative_path_and_every_problem_counted(tmp_path):
    for rel in ("a.png", "sub/b.png", "no_caption.png", "wrong_size.png", "twin.jpg", "twin.png"):
        _write_pair(tmp_path, "train", rel, label_size=(20, 20) if rel == "wrong_size.png" else None)
    (tmp_path / "original_images/train/no_map.png").write_bytes(
        (tmp_path / "original_images/train/a.png").read_bytes())
    (tmp_path / "original_images/train/notes.txt").write_text("x")
    label_map_to_pil(np.zeros((4, 4), np.uint8)).save(tmp_path / "segmented_images/train/orphan.png")
    prompts = {"a.png": "a dog", "sub/b.png": "a cat", "no_map.png": "x", "wrong_size.png": "y",
               "gone.jpg": "z", "twin.jpg": "t", "twin.png": "t"}
    (tmp_path / "segmented_images/train/prompts.json").write_text(json.dumps(prompts))
    index = index_split(tmp_path, "train")
    assert [p.key for p in index.pairs] == ["train/a.png", "train/twin.jpg", "train/sub/b.png"]
    assert [p.caption for p in index.pairs] == ["a dog", "t", "a cat"]
    problems = {kind: sorted(paths) for kind, paths in index.problems.items()}
    assert problems == {
        "images without a label map": ["no_map.png"],
        "images without a caption in prompts.json": ["no_caption.png"],
        "label maps whose size differs from the image's": ["wrong_size.png"],
        "files that are not images (by extension)": ["notes.txt"],
        "label maps without an image": ["orphan.png"],
        "captions without an image": ["gone.jpg"],
        "images whose label map name another image also has": ["twin.png"],
    }
    report = "\n".join(index.report())
    assert "train: 3 image/label-map/caption pairs" in report and "skipped 1 captions without an image" in report


def test_captions_from_a_whole_tree_prompts_file(tmp_path):
    _write_pair(tmp_path, "train", "x.jpg")
    _write_pair(tmp_path, "val", "x.jpg")
    (tmp_path / "segmented_images/prompts.json").write_text(
        json.dumps({"train/x.jpg": "train caption", "val/x.jpg": "val caption"}))
    assert index_split(tmp_path, "train").pairs[0].caption == "train caption"
    assert index_split(tmp_path, "val").pairs[0].caption == "val caption"
    (tmp_path / "segmented_images/val/prompts.json").write_text(json.dumps({"x.jpg": "per split"}))
    assert index_split(tmp_path, "val").pairs[0].caption == "per split"  # the per-split file wins


@pytest.mark.parametrize("seed", range(8))
def test_crop_and_flip_are_shared_by_image_and_label_map(seed):
    label_map = np.random.default_rng(seed).integers(0, 21, size=(24, 37)).astype(np.uint8)
    image = Image.fromarray(colorize(label_map))
    # short side already at the resolution: no resampling, so every pixel must still agree
    pixels, cropped = resize_crop_flip(image, label_map, 24, "crop", random.Random(seed), True, True)
    assert pixels.shape == (24, 24, 3) and cropped.shape == (24, 24)
    assert np.array_equal(pixels, colorize(cropped))


def test_resizing_never_invents_class_ids_and_stretch_fills_the_square():
    label_map = np.random.default_rng(0).choice([0, 7, 15], size=(90, 60)).astype(np.uint8)
    image = Image.fromarray(colorize(label_map))
    pixels, resized = resize_crop_flip(image, label_map, 32, "crop", None, True, True)
    assert set(np.unique(resized)) <= {0, 7, 15} and pixels.shape == (32, 32, 3)
    stretched_pixels, stretched = resize_crop_flip(image, label_map, 16, "stretch", None, True, True)
    assert stretched.shape == (16, 16) and stretched_pixels.shape == (16, 16, 3)


def test_dataset_items_and_seeded_augmentation(tmp_path):
    _write_pair(tmp_path, "train", "a.png", size=(48, 32))
    (tmp_path / "segmented_images/train/prompts.json").write_text(json.dumps({"a.png": "a dog"}))
    pairs = index_split(tmp_path, "train").pairs
    dataset = LabelMapDataset(pairs, SampleOptions(resolution=32, conditioning="onehot"))
    item = dataset[(0, 5)]
    assert item["pixel_values"].shape == (3, 32, 32) and item["control"].shape == (21, 32, 32)
    assert -1 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1
    assert torch.equal(item["control"].sum(0), torch.ones(32, 32))  # one class per pixel
    assert torch.equal(dataset[(0, 5)]["pixel_values"], item["pixel_values"])  # draw seeds it
    crops = {dataset[(0, draw)]["pixel_values"].numpy().tobytes() for draw in range(12)}
    assert len(crops) > 1  # different draws, different crops/flips
    assert item["caption"] == "a dog" and item["key"] == "train/a.png"


def test_sample_stream_shards_ranks_and_restarts_anywhere():
    ranks = [EndlessShardSampler(10, rank, 2, seed=1) for rank in range(2)]
    streams = [[next(it) for _ in range(15)] for it in map(iter, ranks)]  # 3 passes of 5
    for data_pass in range(3):
        shard0 = {i for i, _ in streams[0][5 * data_pass:5 * data_pass + 5]}
        shard1 = {i for i, _ in streams[1][5 * data_pass:5 * data_pass + 5]}
        assert shard0.isdisjoint(shard1) and shard0 | shard1 == set(range(10))
    draws = [d for stream in streams for _, d in stream]
    assert len(set(draws)) == len(draws)  # unique across ranks
    restarted = iter(EndlessShardSampler(10, 1, 2, seed=1, start=7))
    assert [next(restarted) for _ in range(8)] == streams[1][7:15]
    assert streams[0][:5] != [next(iter(EndlessShardSampler(10, 0, 2, seed=2))) for _ in range(5)]


def test_no_training_data_is_a_clear_error(tmp_path):
    config = Config()
    config.train.data_root = str(tmp_path)
    with pytest.raises(DataError, match="no training pairs"):
        DecoderDataModule(config, verbose=False)


def test_the_data_module_gives_each_rank_its_shard_from_the_resume_point(tmp_path):
    from types import SimpleNamespace

    from models.quickstart.shapes import write_shapes_dataset

    write_shapes_dataset(tmp_path, {"train": 10, "val": 3}, size=16)
    config = Config()
    config.train.data_root, config.train.batch_size, config.train.num_workers = str(tmp_path), 2, 0
    config.diffusion.resolution = 16
    module = DecoderDataModule(config, verbose=False)
    draws = {}
    for rank in range(2):
        module.trainer = SimpleNamespace(global_step=3, accumulate_grad_batches=2, global_rank=rank, world_size=2)
        sampler = module.train_dataloader().sampler
        assert (sampler.rank, sampler.world_size, sampler.start) == (rank, 2, 3 * 2 * 2)  # 12 samples done
        stream = iter(sampler)
        draws[rank] = [next(stream)[1] for _ in range(4)]
    assert draws == {0: [24, 26, 28, 30], 1: [25, 27, 29, 31]}
    assert len(module.val_dataset) == 3


def test_the_label_set_of_the_training_maps(tmp_path, capsys):
    from models.layout import write_label_set
    from models.palettes import ADE20K
    from models.train.data import training_label_set

    config = Config()
    _write_pair(tmp_path, "train", "a.png")
    assert training_label_set(tmp_path, config).name == "voc"  # no sidecar, no val split: VOC maps
    write_label_set(tmp_path / "segmented_images" / "train", ADE20K)
    with pytest.raises(DataError, match="diffusion.palette: ade20k"):
        training_label_set(tmp_path, config)  # ADE20K maps cannot be drawn in VOC colours
    config.diffusion.palette = "ade20k"
    assert training_label_set(tmp_path, config).name == "ade20k"
    _write_pair(tmp_path, "val", "b.png")
    with pytest.raises(DataError, match="the train maps are ade20k, the val maps voc"):
        training_label_set(tmp_path, config)
    (tmp_path / "segmented_images" / "val" / "label_set.json").write_text("{not json")
    with pytest.raises(DataError, match="val/label_set.json: unreadable"):
        training_label_set(tmp_path, config)
    # a map with a value outside its set is skipped with a warning, not drawn as something else
    (tmp_path / "segmented_images/train/prompts.json").write_text(json.dumps({"a.png": "a dog"}))
    pairs = index_split(tmp_path, "train").pairs
    assert len(pairs) == 1
    options = SampleOptions(resolution=32, palette="voc")
    bad = tmp_path / "segmented_images" / "train" / "a.png"
    Image.fromarray(np.full((30, 40), 77, dtype=np.uint8)).save(bad)
    with pytest.raises(DataError, match="no readable training pair"):
        LabelMapDataset(pairs, options)[0]
    assert "class ids 77 outside 0..20" in capsys.readouterr().err
