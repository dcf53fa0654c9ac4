"""Decoder training data: photographs, label maps and captions in the original project's layout.

    <data_root>/original_images/<split>/<rel>          photographs (any subfolders)
    <data_root>/segmented_images/<split>/<rel>.png     label maps (palette PNGs, pixel = class id)
    <data_root>/segmented_images/<split>/prompts.json  {<rel>: caption}

``process_input.py --input_dir data/original_images/train --output_dir data/segmented_images/train``
writes the second and third line. A run over the whole tree (``--input_dir data/original_images
--output_dir data/segmented_images``) writes one ``segmented_images/prompts.json`` with keys
``<split>/<rel>`` instead; both are read, the per-split file winning where they overlap.

Images, label maps and captions are matched by relative path. Everything that does not match,
or whose header says it cannot be used, is skipped and counted in ``SplitIndex.problems``; the
training script prints those counts, so nothing is dropped silently.

Each training sample is resized (short side to ``resolution``) and cropped to a square, with the
label map resized by nearest neighbour and the same crop and flip applied to both. Augmentation
and data order come from a seeded, per-rank stream that can restart at any step, so resuming a
run sees exactly the samples it would have seen without the interruption.
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from models.config import Config
from models.decode.control import check_drawable, control_tensor, resize_label_map
from models.imageio import ImageReadError, is_image_name, read_label_map, read_rgb, walk_files
from models.jobcontrol import ignore_stop_signals
from models.layout import (LABEL_MAPS_FOLDER, PROMPTS_FILE, find_label_set, label_map_relpath, read_prompts,
                           split_folders)
from models.palettes import VOC, LabelSet
from models.runtime import is_global_zero

EXAMPLES_SHOWN = 3  # file names printed per kind of problem
SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that turn the image by 90 degrees
AUGMENT_STREAM = 0  # derived_seed(seed, stream, draw): crop/flip here, noise in the module


def derived_seed(*numbers: int) -> int:
    """A 63-bit seed from a tuple of integers (NumPy's SeedSequence mixing: no collisions by
    arithmetic coincidence, the same on every platform and process)."""
    return int(np.random.SeedSequence([n % 2**63 for n in numbers]).generate_state(2, np.uint64)[0] >> 1)


class DataError(ValueError):
    """The training data cannot be used; the message says what is missing."""


@dataclass(frozen=True)
class TrainingPair:
    """One photograph with its label map and caption."""

    key: str  # "<split>/<rel>": unique, stable across runs
    image_path: Path
    label_map_path: Path
    caption: str

    @property
    def relpath(self) -> str:
        """The image's path relative to its split folder (``<rel>``)."""
        return self.key.partition("/")[2]


@dataclass
class SplitIndex:
    """The usable pairs of one split, and every file that was skipped or left unmatched."""

    split: str
    pairs: list[TrainingPair] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=dict)  # problem -> relative paths

    def skip(self, problem: str, relpath: str) -> None:
        """Record that ``relpath`` was not used, and why."""
        self.problems.setdefault(problem, []).append(relpath)

    def report(self) -> list[str]:
        """One line for the split, then one per kind of problem with counts and examples."""
        lines = [f"{self.split}: {len(self.pairs)} image/label-map/caption pairs"]
        for problem, relpaths in sorted(self.problems.items()):
            shown = ", ".join(relpaths[:EXAMPLES_SHOWN]) + (", ..." if len(relpaths) > EXAMPLES_SHOWN else "")
            lines.append(f"  skipped {len(relpaths)} {problem}: {shown}")
        return lines


def read_split_captions(data_root: Path, split: str) -> dict[str, str]:
    """Captions of ``split`` keyed by path relative to ``original_images/<split>/``."""
    segmented = data_root / LABEL_MAPS_FOLDER
    captions = {}
    for key, caption in read_prompts(segmented / PROMPTS_FILE, required=False).items():
        head, _, rel = key.partition("/")
        if head == split and rel:
            captions[rel] = caption
    captions.update(read_prompts(segmented / split / PROMPTS_FILE, required=False))
    return captions


def index_split(data_root: str | Path, split: str, check_headers: bool = True) -> SplitIndex:
    """Match images, label maps and captions of one split by relative path."""
    data_root = Path(data_root)
    image_dir, label_dir = split_folders(data_root, split)
    index = SplitIndex(split)
    captions = read_split_captions(data_root, split)
    images = {f.relpath: f.path for f in walk_files(image_dir)} if image_dir.is_dir() else {}
    label_maps = {f.relpath: f.path for f in walk_files(label_dir)
                  if f.relpath.endswith(".png")} if label_dir.is_dir() else {}
    matched_maps: set[str] = set()
    for relpath, image_path in images.items():
        label_rel = label_map_relpath(relpath)
        if not is_image_name(relpath):
            index.skip("files that are not images (by extension)", relpath)
        elif label_rel in matched_maps:  # a.jpg and a.png: one label map, which image is it?
            index.skip("images whose label map name another image also has", relpath)
        elif label_rel not in label_maps:
            index.skip("images without a label map", relpath)
        elif relpath not in captions:
            index.skip("images without a caption in prompts.json", relpath)
            matched_maps.add(label_rel)
        else:
            matched_maps.add(label_rel)
            problem = _header_problem(image_path, label_maps[label_rel]) if check_headers else None
            if problem:
                index.skip(problem, relpath)
            else:
                index.pairs.append(TrainingPair(f"{split}/{relpath}", image_path,
                                                label_maps[label_rel], captions[relpath]))
    for label_rel in sorted(set(label_maps) - matched_maps):
        index.skip("label maps without an image", label_rel)
    for relpath in sorted(set(captions) - set(images)):
        index.skip("captions without an image", relpath)
    return index


def _header_problem(image_path: Path, label_map_path: Path) -> str | None:
    """Why a pair cannot be used, judged from the file headers alone (cheap); None if fine."""
    try:
        with Image.open(image_path) as image:
            width, height = image.size
            if image.getexif().get(0x0112) in SWAPPING_ORIENTATIONS:
                width, height = height, width
    except (OSError, SyntaxError, ValueError):
        return "unreadable images"
    try:
        with Image.open(label_map_path) as label_image:
            if label_image.mode not in ("P", "L", "I", "I;16", "I;16B"):
                return "label maps that are not palette or gray PNGs"
            if label_image.size != (width, height):
                return "label maps whose size differs from the image's"
    except (OSError, SyntaxError, ValueError):
        return "unreadable label maps"
    return None


def resize_crop_flip(image: Image.Image, label_map: np.ndarray, resolution: int, resize_mode: str,
                     rng: random.Random | None, random_crop: bool,
                     random_flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """(R, R, 3) image and (R, R) label map with the same resize, crop and flip applied."""
    width, height = image.size
    if resize_mode == "stretch":  # the original project: square stretch, aspect not kept
        new_width = new_height = resolution
    else:
        scale = resolution / min(width, height)
        new_width, new_height = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    image_array = np.asarray(image.resize((new_width, new_height), Image.BICUBIC))  # antialiased
    label_map = resize_label_map(label_map, new_width, new_height)  # nearest: ids never blend
    random_crop, random_flip = rng is not None and random_crop, rng is not None and random_flip
    left = rng.randint(0, new_width - resolution) if random_crop else (new_width - resolution) // 2
    top = rng.randint(0, new_height - resolution) if random_crop else (new_height - resolution) // 2
    image_array = image_array[top:top + resolution, left:left + resolution]
    label_map = label_map[top:top + resolution, left:left + resolution]
    if random_flip and rng.random() < 0.5:
        image_array, label_map = image_array[:, ::-1], label_map[:, ::-1]
    return image_array.copy(), label_map.copy()  # contiguous, writable


@dataclass(frozen=True)
class SampleOptions:
    """How a pair becomes a training sample."""

    resolution: int = 512
    conditioning: str = "palette"
    palette: str = "voc"
    label_set: LabelSet = VOC  # what the label maps' values mean (their folder's label_set.json)
    resize_mode: str = "crop"
    random_crop: bool = True
    random_flip: bool = True
    seed: int = 0

    @classmethod
    def from_config(cls, config: Config, label_set: LabelSet = VOC) -> SampleOptions:
        """The options a config asks for, for maps of ``label_set``."""
        train, diffusion = config.train, config.diffusion
        return cls(diffusion.resolution, diffusion.conditioning, diffusion.palette, label_set,
                   train.resize_mode, train.random_crop, train.random_flip, train.seed)


class LabelMapDataset(Dataset):
    """Pairs as tensors: ``pixel_values`` (3, R, R) in [-1, 1], ``control`` (C, R, R) in [0, 1].

    Items are indexed by an int (deterministic: centre crop, no flip) or by ``(index, draw)``
    from ``EndlessShardSampler``, where ``draw`` seeds that sample's crop and flip.
    """

    def __init__(self, pairs: list[TrainingPair], options: SampleOptions):
        self.pairs = pairs
        self.options = options

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, draw = item if isinstance(item, tuple) else (item, -1)
        for attempt in range(len(self.pairs)):
            pair = self.pairs[(index + attempt) % len(self.pairs)]
            try:
                return self.load(pair, draw)
            except (ImageReadError, OSError, ValueError) as error:  # header fine, data broken
                print(f"warning: skipping {pair.key}: {error}", file=sys.stderr)
        raise DataError("no readable training pair left")

    def load(self, pair: TrainingPair, draw: int = -1) -> dict:
        """One sample; ``draw`` >= 0 seeds its random crop and flip."""
        options = self.options
        image = read_rgb(pair.image_path)
        label_map = read_label_map(pair.label_map_path)
        options.label_set.check(label_map)
        if label_map.shape != (image.height, image.width):
            raise ValueError(f"label map is {label_map.shape[1]}x{label_map.shape[0]}, "
                             f"image is {image.width}x{image.height}")
        rng = random.Random(derived_seed(options.seed, AUGMENT_STREAM, draw)) if draw >= 0 else None
        image_array, label_map = resize_crop_flip(image, label_map, options.resolution, options.resize_mode,
                                                  rng, options.random_crop, options.random_flip)
        pixels = torch.from_numpy(image_array).permute(2, 0, 1).float() / 127.5 - 1.0  # (3, R, R)
        control = control_tensor(label_map, options.label_set, options.palette, options.conditioning)
        return {"pixel_values": pixels, "control": control, "caption": pair.caption,
                "key": pair.key, "draw": draw}


class EndlessShardSampler(Sampler):
    """An endless, seeded stream of ``(index, draw)`` for one rank, restartable at any draw.

    Pass ``e`` over the data is a permutation seeded by ``(seed, e)``, padded to a multiple of
    the world size and dealt round-robin, so ranks see disjoint shards. ``draw`` numbers the
    samples of all ranks uniquely (``local draw * world_size + rank``).
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0, start: int = 0):
        if size <= 0:
            raise DataError("no training samples")
        self.size, self.rank, self.world_size, self.seed, self.start = size, rank, world_size, seed, start
        self.per_rank = math.ceil(size / world_size)

    def shard(self, data_pass: int) -> np.ndarray:
        """This rank's indices in pass ``data_pass``."""
        order = np.random.default_rng([self.seed, data_pass]).permutation(self.size)
        return np.resize(order, self.per_rank * self.world_size)[self.rank::self.world_size]

    def __iter__(self):
        draw, shard, shard_pass = self.start, None, -1
        while True:
            data_pass, offset = divmod(draw, self.per_rank)
            if data_pass != shard_pass:
                shard, shard_pass = self.shard(data_pass), data_pass
            yield int(shard[offset]), draw * self.world_size + self.rank
            draw += 1


def training_label_set(data_root: Path, config: Config) -> LabelSet:
    """The label set of the train (and, if present, val) maps, from their ``label_set.json``,
    checked against the control images the config asks for; ``DataError`` saying what to change."""
    folders = {split: split_folders(data_root, split)[1] for split in ("train", "val")}
    try:
        sets = {split: find_label_set(folder, root=data_root) for split, folder in folders.items()
                if folder.is_dir() or split == "train"}
    except ValueError as error:
        raise DataError(str(error)) from None
    label_set = sets["train"]
    if "val" in sets and sets["val"].name != label_set.name:
        raise DataError(f"{data_root}: the train maps are {label_set.name}, the val maps {sets['val'].name}")
    diffusion = config.diffusion
    try:
        check_drawable(label_set, diffusion.conditioning, diffusion.palette)
    except ValueError as error:
        palette = "ade20k" if label_set.name == "ade20k" else "voc"
        raise DataError(f"{error} (set diffusion.palette: {palette} to train on them)") from None
    return label_set


class DecoderDataModule(pl.LightningDataModule):
    """Train and validation loaders for ``train.py``; indexes the data once, on construction."""

    def __init__(self, config: Config, data_root: str | Path | None = None, verbose: bool = True):
        super().__init__()
        self.config = config
        self.data_root = Path(data_root or config.train.data_root)
        self.options = SampleOptions.from_config(config, training_label_set(self.data_root, config))
        self.train_index = index_split(self.data_root, "train")
        self.val_index = index_split(self.data_root, "val")
        if verbose and is_global_zero():
            for line in self.train_index.report() + self.val_index.report():
                print(line)
        if not self.train_index.pairs:
            raise DataError(f"no training pairs under {self.data_root}: expected original_images/train/, "
                            f"segmented_images/train/ label maps and prompts.json (see docs/training.md)")
        self.train_dataset = LabelMapDataset(self.train_index.pairs, self.options)
        val_pairs = self.val_index.pairs[:config.train.val_max_samples]
        self.val_dataset = LabelMapDataset(val_pairs, self.options) if val_pairs else None

    def train_dataloader(self) -> DataLoader:
        """Resumes the sample stream where ``trainer.global_step`` says training stopped."""
        trainer, train = self.trainer, self.config.train
        consumed = trainer.global_step * trainer.accumulate_grad_batches * train.batch_size
        sampler = EndlessShardSampler(len(self.train_dataset), trainer.global_rank, trainer.world_size,
                                      train.seed, start=consumed)
        return DataLoader(self.train_dataset, batch_size=train.batch_size, sampler=sampler,
                          num_workers=train.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=train.num_workers > 0, worker_init_fn=ignore_stop_signals)

    def val_dataloader(self) -> DataLoader | list:
        """The first ``val_max_samples`` validation pairs, centre-cropped, split across ranks."""
        if self.val_dataset is None:
            return []
        trainer = self.trainer
        sampler = (DistributedSampler(self.val_dataset, trainer.world_size, trainer.global_rank, shuffle=False)
                   if trainer.world_size > 1 else None)
        return DataLoader(self.val_dataset, batch_size=self.config.train.batch_size, sampler=sampler,
                          num_workers=min(self.config.train.num_workers, 2), worker_init_fn=ignore_stop_signals)
