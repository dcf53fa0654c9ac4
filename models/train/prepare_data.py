"""Build the training layout from PASCAL VOC 2012, ADE20K (ADEChallengeData2016) or a plain folder of images.

    python -m models.train.prepare_data --voc_root VOCdevkit/VOC2012 [--label_source predicted|gt]
    python -m models.train.prepare_data --ade_root ADEChallengeData2016 [--label_source gt|predicted]
    python -m models.train.prepare_data --image_dir my_photos --split_fractions 0.8 0.1 0.1 --seed 0

Writes, under --data_root (default data/):

- ``original_images/{train,val,test}/<relative path>``: the images, hard-linked (falling back to
  a copy across file systems), symbolically linked or copied; never moved;
- ``segmented_images/{split}/<relative path>.png``: label maps as palette PNGs (pixel = class id);
- ``segmented_images/{split}/label_set.json``: what the ids mean (``voc`` or ``ade20k``);
- ``segmented_images/{split}/prompts.json``: ``{path relative to original_images/{split}: caption}``,
  the same files ``process_input.py`` writes for each split folder;
- ``prepare_data.json``: the settings that decided the content, so that a re-run with other
  settings is refused instead of mixing two layouts.

VOC splits: ``train`` is ImageSets/Segmentation/train.txt minus a seeded ``--val_fraction`` of
it, which becomes ``val``; ``test`` is the official val.txt, because the VOC test annotations are
not public. ADE20K alike: images/training less the ``val`` share, and images/validation as
``test``. A plain folder is split at random (seeded) by ``--split_fractions``.

Re-running does nothing that is already done. Missing or unreadable files are reported one line
each, the rest is prepared, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import errno
import filecmp
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.cli import add_encoder_arguments, config_from_args
from models.config import Config, ConfigError
from models.encode.captioning import BlipCaptioner
from models.encode.job import (ImageFiles, caption_records, label_map_path, merge_captions, plan_encode, read_captions,
                               run_encode)
from models.encode.segmentation import CheckpointError
from models.imageio import (ImageReadError, InputFile, atomic_path, atomic_save_image, atomic_write_json, is_image_name,
                            read_json, read_label_map, read_rgb, walk_files)
from models.layout import (IMAGES_FOLDER, LABEL_MAPS_FOLDER, LABEL_SET_FILE, PROMPTS_FILE, SPLITS, split_folders,
                           write_label_set, write_prompts)
from models.palettes import ADE20K, VOC, LabelSet, label_map_to_pil
from models.runtime import DeviceSpec, is_global_zero, network_dtype, resolve_devices

MANIFEST_FILE = "prepare_data.json"
LINK_MODES = ("hard", "symbolic", "copy")
# Errors of os.link that mean "this file system cannot hard-link here", not "bad input".
NO_HARD_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
VOID_CHOICES = ("nearest", "background", "keep")  # what the void pixels (255) of VOC ground truth become


@dataclass(frozen=True)
class SourceItem:
    """One image of the source and where it goes."""

    split: str
    relpath: str  # path under original_images/{split}/, "/" separators
    image: Path  # the source image
    mask: Path | None = None  # its ground-truth label map (labelled sources, label_source gt)


@dataclass
class SourcePlan:
    """Every image of the source assigned to a split, and what could not be."""

    items: list[SourceItem] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # source file -> reason
    warnings: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # not image files


@dataclass
class SplitCounts:
    """What one split holds after the run, and what this run added."""

    images: int = 0  # images present in original_images/{split}
    linked: int = 0  # of which linked or copied by this run
    label_maps: int = 0  # label maps written by this run
    captions: int = 0  # captions written by this run


def split_counts(total: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Images per split: val and test rounded from their fractions, train the rest."""
    val, test = round(fractions[1] * total), round(fractions[2] * total)
    return total - val - test, val, test


def assign_splits(names: list[str], fractions: tuple[float, float, float],
                  seed: int) -> dict[str, list[str]]:
    """A seeded random split of ``names`` with the given fractions (independent of input order)."""
    order = sorted(names)
    permuted = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    train, val, _ = split_counts(len(order), fractions)
    return {"train": sorted(permuted[:train]), "val": sorted(permuted[train:train + val]),
            "test": sorted(permuted[train + val:])}


def check_fractions(fractions: list[float]) -> tuple[float, float, float]:
    """Three non-negative fractions summing to 1, with some room for training."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"--split_fractions must be three non-negative numbers (train val test) "
                         f"that sum to 1, got {fractions}")
    if fractions[0] == 0:
        raise ValueError("--split_fractions gives no images to train")
    return tuple(fractions)


def find_voc_root(path: Path) -> Path:
    """The VOC2012 folder at, or under, ``path`` (VOC2012/, VOCdevkit/ or its parent)."""
    for candidate in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    raise ValueError(f"--voc_root {path}: no JPEGImages/ and ImageSets/Segmentation/ found there, "
                     f"nor under VOC2012/ or VOCdevkit/VOC2012/")


def read_id_list(path: Path) -> list[str]:
    """Image ids of a VOC list file, one per line, in file order, without repeats."""
    if not path.is_file():
        raise ValueError(f"VOC split list not found: {path}")
    ids = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(dict.fromkeys(ids))


Pairs = dict[str, tuple[Path, Path]]  # image id -> (image, its ground-truth label map)


def voc_pairs(voc_root: Path) -> tuple[Pairs, Pairs]:
    """The images of train.txt (to train on) and of val.txt (held out), with their masks."""
    lists = voc_root / "ImageSets" / "Segmentation"
    return tuple({image_id: (voc_root / "JPEGImages" / f"{image_id}.jpg",
                             voc_root / "SegmentationClass" / f"{image_id}.png")
                  for image_id in read_id_list(lists / name)} for name in ("train.txt", "val.txt"))


def find_ade_root(path: Path) -> Path:
    """The ADEChallengeData2016 folder at, or under, ``path``."""
    for candidate in (path, path / "ADEChallengeData2016"):
        if all((candidate / "images" / part).is_dir() for part in ("training", "validation")):
            return candidate
    raise ValueError(f"--ade_root {path}: no images/training/ and images/validation/ found there, "
                     f"nor under ADEChallengeData2016/")


def ade_pairs(ade_root: Path) -> tuple[Pairs, Pairs]:
    """The images of images/training (to train on) and images/validation (held out), with the
    annotation of the same stem."""
    return tuple({image.stem: (image, ade_root / "annotations" / part / f"{image.stem}.png")
                  for image in sorted((ade_root / "images" / part).glob("*.jpg"))}
                 for part in ("training", "validation"))


@dataclass(frozen=True)
class LabelledSource:
    """A data set with ground-truth label maps and an official held-out part."""

    name: str  # "source" in prepare_data.json
    option: str  # its command-line flag, without the dashes
    label_set: LabelSet  # what the values of its ground-truth maps mean
    find_root: Callable[[Path], Path]  # the data set's folder at or under a path; ValueError if none
    pairs: Callable[[Path], tuple[Pairs, Pairs]]  # (to train on, held out) of a root
    parts: tuple[str, str]  # the names of those two parts, for messages
    default_label_source: str  # --label_source auto: "predicted" or "gt"


# VOC trains on DeepLabV3+'s predictions by default: decoding only ever meets those, never VOC's
# void bands (docs/training.md measures what they change); ADE20K's annotations are dense.
VOC_SOURCE = LabelledSource("voc", "voc_root", VOC, find_voc_root, voc_pairs, ("train.txt", "val.txt"), "predicted")
ADE_SOURCE = LabelledSource("ade20k", "ade_root", ADE20K, find_ade_root, ade_pairs,
                            ("images/training", "images/validation"), "gt")
LABELLED_SOURCES = (VOC_SOURCE, ADE_SOURCE)


def labelled_plan(source: LabelledSource, root: Path, val_fraction: float, seed: int,
                  with_masks: bool) -> SourcePlan:
    """The part to train on less a seeded val share as train/val, the held-out part as test."""
    to_train, held_out = source.pairs(root)
    plan = SourcePlan()
    both = set(to_train) & set(held_out)
    if both:  # a held-out image must never be trained on
        plan.warnings.append(f"{len(both)} ids are in both {source.parts[0]} and {source.parts[1]} "
                             f"(e.g. {min(both)}); they go to test only")
    splits = assign_splits([i for i in to_train if i not in both], (1 - val_fraction, val_fraction, 0.0), seed)
    splits["test"] = sorted(held_out)
    for split in SPLITS:
        pairs = held_out if split == "test" else to_train
        for image_id in splits[split]:
            image, mask = pairs[image_id]
            plan.items.append(SourceItem(split, image.name, image, mask if with_masks else None))
    if with_masks:
        check_mask_folders(source, plan.items)
    return plan


def check_mask_folders(source: LabelledSource, items: list[SourceItem]) -> None:
    """Refuse ground truth from a tree without its annotation folders (not one error per image)."""
    for folder in sorted({item.mask.parent for item in items}):
        if not folder.is_dir():
            raise ValueError(f"{folder} not found: the {source.name} ground truth is read from there; "
                             f"use --label_source predicted to predict the label maps instead")


def folder_plan(image_dir: Path, fractions: tuple[float, float, float], seed: int) -> SourcePlan:
    """Every image under ``image_dir`` (subfolders kept), split at random with ``seed``."""
    plan = SourcePlan()
    images = {}
    for item in walk_files(image_dir):
        if is_image_name(item.relpath):
            images[item.relpath] = item.path
        else:
            plan.ignored.append(item.relpath)
    for split, relpaths in assign_splits(list(images), fractions, seed).items():
        plan.items += [SourceItem(split, relpath, images[relpath]) for relpath in relpaths]
    return plan


class LinkError(Exception):
    """A target exists and is not the source file."""


def same_file(source: Path, target: Path) -> bool:
    """Whether ``target`` is ``source`` (a link to it) or a copy of it (same stat or bytes)."""
    try:
        return os.path.samefile(source, target) or filecmp.cmp(source, target)
    except OSError:
        return False


def link_file(source: Path, target: Path, mode: str) -> str:
    """Place ``source`` at ``target`` as ``mode``; the mode used ("copy" after a failed hard link)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode == "hard":
        try:
            os.link(source, target)
            return "hard"
        except OSError as error:
            if error.errno not in NO_HARD_LINK:
                raise
        mode = "copy"
    if mode == "symbolic":
        os.symlink(source.resolve(), target)
        return "symbolic"
    with atomic_path(target) as temporary:
        shutil.copy2(source, temporary)
    return "copy"


def read_ground_truth(path: Path, size: tuple[int, int], label_set: LabelSet) -> np.ndarray:
    """A ground-truth label map of ``label_set`` (its classes, or its void) of the given (width, height)."""
    label_map = read_label_map(path, max_pixels=None, what="ground-truth mask")
    if label_map.shape != (size[1], size[0]):
        raise ImageReadError(path, f"mask is {label_map.shape[1]}x{label_map.shape[0]}, "
                                   f"its image {size[0]}x{size[1]}")
    try:
        label_set.check(label_map)
    except ValueError as error:
        raise ImageReadError(path, str(error)) from None
    return label_map


class Preparer:
    """Places source images into the layout and writes ground-truth label maps."""

    def __init__(self, data_root: Path, link_mode: str, max_pixels: int | None,
                 label_set: LabelSet | None = None, void: str = "nearest"):
        self.data_root = data_root
        self.link_mode = link_mode
        self.max_pixels = max_pixels
        self.label_set = label_set  # of the ground truth; None: label maps are predicted later
        self.void = void  # what void pixels of the ground truth become (VOID_CHOICES)
        self.recorded: set[str] = set()  # splits whose label_set.json is checked
        self.counts = {split: SplitCounts() for split in SPLITS}
        self.failures: dict[str, str] = {}
        self.copied_instead = False  # hard links were impossible for at least one file
        self.sources: dict[Path, Path] = {}  # image in the layout -> its source file

    def folders(self, split: str) -> tuple[Path, Path]:
        """The image folder and the label-map folder of ``split``."""
        return split_folders(self.data_root, split)

    def image_path(self, item: SourceItem) -> Path:
        return self.folders(item.split)[0] / item.relpath

    def map_path(self, item: SourceItem) -> Path:
        return label_map_path(self.folders(item.split)[1], item.relpath)

    def record_label_set(self, split: str) -> None:
        """Write the split's ``label_set.json`` (before its first map) unless it already says so."""
        folder = self.folders(split)[1]
        if split not in self.recorded and read_json(folder / LABEL_SET_FILE) != self.label_set.to_dict():
            write_label_set(folder, self.label_set)
        self.recorded.add(split)

    def fail(self, split: str, relpath: str, reason: str) -> None:
        """Record a failure of a file in the layout under the name of its source file."""
        layout_path = self.folders(split)[0] / relpath
        self.failures[str(self.sources.get(layout_path, layout_path))] = reason

    def place(self, item: SourceItem) -> bool:
        """Link the image (checked first) and, with masks, write its label map; False on failure."""
        target, counts = self.image_path(item), self.counts[item.split]
        self.sources[target] = item.image
        try:
            present = os.path.lexists(target)
            if present and not same_file(item.image, target):
                raise LinkError(f"{target} exists and is not this file; remove it or use "
                                f"another --data_root")
            needs_map = self.label_set is not None and not self.map_path(item).exists()
            label_map = self.check(item) if not present or needs_map else None
            if not present:
                self.copied_instead |= link_file(item.image, target, self.link_mode) != self.link_mode
                counts.linked += 1
            if self.label_set is not None:
                self.record_label_set(item.split)
            if needs_map:
                atomic_save_image(label_map_to_pil(label_map, self.label_set), self.map_path(item))
                counts.label_maps += 1
        except ImageReadError as error:
            self.failures[error.path] = error.reason
            return False
        except (LinkError, OSError) as error:
            self.failures[str(item.image)] = str(error)
            return False
        counts.images += 1
        return True

    def check(self, item: SourceItem) -> np.ndarray | None:
        """Decode the image (so broken files never enter the layout); its label map with masks."""
        size = read_rgb(item.image, self.max_pixels).size
        if self.label_set is None:
            return None
        label_map = read_ground_truth(item.mask, size, self.label_set)
        if self.label_set.void is not None and self.void != "keep":
            label_map = fill_void(label_map, self.label_set.void, nearest=self.void == "nearest")
        return label_map


def fill_void(label_map: np.ndarray, void: int, nearest: bool = True) -> np.ndarray:
    """``label_map`` with its ``void`` pixels given the label of the nearest labelled pixel (the
    band VOC draws around each object is split down its middle, where a segmenter would put the
    edge), or background (0) when not ``nearest`` or nothing is labelled."""
    unlabelled = label_map == void
    if not unlabelled.any():
        return label_map
    if not nearest or unlabelled.all():
        return np.where(unlabelled, 0, label_map).astype(np.uint8)
    from scipy import ndimage

    indices = ndimage.distance_transform_edt(unlabelled, return_distances=False, return_indices=True)
    return label_map[tuple(indices)]  # every pixel takes its nearest labelled pixel's label (itself if labelled)


def find_split_conflicts(items: list[SourceItem], data_root: Path) -> dict[str, str]:
    """Images already present in another split (from a run with another split): leakage."""
    conflicts = {}
    for item in items:
        for other in SPLITS:
            if other != item.split and (split_folders(data_root, other)[0] / item.relpath).exists():
                conflicts[str(item.image)] = (
                    f"already in original_images/{other}/ but now assigned to {item.split}; the "
                    f"source changed since the last run: use a fresh --data_root")
    return conflicts


def caption_device(devices: DeviceSpec) -> torch.device:
    """The single device that captions ground-truth layouts (the first one given)."""
    if devices.accelerator == "cpu":
        return torch.device("cpu")
    return torch.device("cuda", devices.devices[0] if isinstance(devices.devices, list) else 0)


def caption_split(captioner: BlipCaptioner, split: str, todo: list[SourceItem],
                  preparer: Preparer, config: Config) -> None:
    """Caption ``todo`` (images of one split), saving ``prompts.json`` after each batch."""
    output_dir = preparer.folders(split)[1]
    captions = read_captions(output_dir)
    files = [InputFile(preparer.image_path(item), item.relpath) for item in todo]
    loader = DataLoader(ImageFiles(files, config.encode.max_pixels), collate_fn=list,
                        batch_size=config.encode.batch_size, num_workers=config.encode.num_workers)
    for batch in tqdm(loader, desc=f"captions {split}", unit="batch"):
        good = [record for record in batch if "image" in record]
        for record in batch:
            if "error" in record:
                preparer.fail(split, record["relpath"], record["error"])
        new = captioner.caption([record["image"] for record in good])
        captions.update({record["relpath"]: caption for record, caption in zip(good, new)})
        write_prompts(output_dir / PROMPTS_FILE, captions)
        preparer.counts[split].captions += len(new)


def caption_ground_truth(placed: list[SourceItem], preparer: Preparer, config: Config,
                         devices: DeviceSpec) -> None:
    """BLIP captions for the placed images that have none; BLIP is loaded only if needed."""
    todo = {}
    for split in SPLITS:
        captions = read_captions(preparer.folders(split)[1])
        todo[split] = [i for i in placed if i.split == split and i.relpath not in captions]
    if not any(todo.values()):
        return
    device = caption_device(devices)
    if devices.world_size > 1:
        print(f"note: ground-truth label maps need only captions; they run on {device}",
              file=sys.stderr)
    captioner = BlipCaptioner.from_config(config.captioning, device=device,
                                          dtype=network_dtype(config.encode.precision, device))
    for split, items in todo.items():
        if items:
            caption_split(captioner, split, items, preparer, config)


def encode_predicted(preparer: Preparer, config: Config, devices: DeviceSpec) -> bool:
    """Run the encoder job on each split folder, as process_input.py would; False on rank > 0."""
    for split in SPLITS:
        input_dir, output_dir = preparer.folders(split)
        if not input_dir.is_dir():
            continue
        plan = plan_encode(input_dir, output_dir)
        for relpath, reason in plan.failures.items():
            preparer.fail(split, relpath, reason)
        if not plan.todo:
            if is_global_zero() and caption_records(output_dir).files():
                merge_captions(output_dir)
            continue
        result = run_encode(plan, config, devices, output_dir)
        for relpath, reason in result.failures.items():
            preparer.fail(split, relpath, reason)
        preparer.counts[split].label_maps += result.written
        preparer.counts[split].captions += result.written
    return is_global_zero()


@dataclass(frozen=True)
class ResolvedSource:
    """What the source flags chose."""

    kind: LabelledSource | None  # None: a plain folder of images
    folder: Path  # the source's root, resolved
    label_source: str  # "gt" or "predicted"
    plan: SourcePlan

    @property
    def ground_truth(self) -> LabelSet | None:
        """The label set of the ground-truth maps the layout gets; None when maps are predicted."""
        return self.kind.label_set if self.label_source == "gt" else None


def source_settings(args: argparse.Namespace, source: ResolvedSource) -> dict:
    """The settings that decide what the layout contains."""
    settings = {"source": source.kind.name if source.kind else "folder", "source_dir": str(source.folder),
                "label_source": source.label_source, "seed": args.seed}
    if source.kind:
        settings["val_fraction"] = args.val_fraction
        if source.ground_truth is not None and source.ground_truth.void is not None:
            settings["void"] = args.void
    else:
        settings["split_fractions"] = list(args.split_fractions)
    return settings


def check_manifest(data_root: Path, settings: dict) -> None:
    """Refuse to mix layouts: an earlier run into ``data_root`` must have used the same settings."""
    previous = read_json(data_root / MANIFEST_FILE)
    if previous is None or previous == settings:
        return
    changes = ", ".join(f"{key} {previous.get(key)!r} -> {settings.get(key)!r}"
                        for key in sorted(set(previous) | set(settings))
                        if previous.get(key) != settings.get(key))
    raise ValueError(f"{data_root} was prepared with other settings ({changes}); use another "
                     f"--data_root, or delete that one to rebuild it")


def check_label_set_files(data_root: Path, label_set: LabelSet | None) -> None:
    """``ValueError`` for a split's ``label_set.json`` that cannot be read or names another set."""
    for split in SPLITS:
        path = split_folders(data_root, split)[1] / LABEL_SET_FILE
        try:
            existing = read_json(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: unreadable ({error}); delete it and run again") from None
        name = existing.get("name") if isinstance(existing, dict) else existing
        if existing is not None and label_set is not None and name != label_set.name:
            raise ValueError(f"{path} says the maps there are {name!r}, this source gives {label_set.name} maps; "
                             f"use another --data_root")


def report(plan: SourcePlan, preparer: Preparer, data_root: Path) -> int:
    """Print one line per failed file and a summary per split; the exit status."""
    failures = {**plan.failures, **preparer.failures}
    for name in sorted(failures):
        print(f"error: {name}: {failures[name]}", file=sys.stderr)
    for name in plan.ignored:
        print(f"skipped: {name}: not an image file (by its extension)", file=sys.stderr)
    for split, counts in preparer.counts.items():
        print(f"{split}: images {counts.images} (this run: linked {counts.linked}, "
              f"label maps {counts.label_maps}, captions {counts.captions})")
    print(f"failed {len(failures)}, ignored {len(plan.ignored)} -> {data_root}")
    return 1 if failures else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m models.train.prepare_data", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--voc_root", help="extracted VOC 2012: VOC2012/, VOCdevkit/ or its parent")
    source.add_argument("--ade_root", help="extracted ADE20K scene parsing: ADEChallengeData2016/ or its parent")
    source.add_argument("--image_dir", help="a plain folder of images (searched recursively)")
    parser.add_argument("--data_root", default="data", help="where the layout is built")
    parser.add_argument("--label_source", choices=("auto", "gt", "predicted"), default="auto",
                        help="label maps from the data set's ground truth or predicted by the encoder (what "
                             "decoding sees); auto: predicted for --voc_root and --image_dir, gt for --ade_root")
    parser.add_argument("--void", choices=VOID_CHOICES, default="nearest",
                        help="VOC ground truth: void/boundary pixels (255) take the nearest labelled pixel's "
                             "class, become background (0) or stay 255; ADE20K has no void (only the default "
                             "there)")
    parser.add_argument("--val_fraction", type=float, default=0.1,
                        help="VOC, ADE20K: share of train.txt or images/training held out as val (test is "
                             "VOC's val.txt or ADE20K's images/validation)")
    parser.add_argument("--split_fractions", type=float, nargs=3, default=[0.8, 0.1, 0.1],
                        metavar=("TRAIN", "VAL", "TEST"), help="plain folder: split fractions")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    parser.add_argument("--link", choices=LINK_MODES, default="hard",
                        help="how images enter the layout; hard falls back to copy across file systems")
    add_encoder_arguments(parser)
    return parser.parse_args(argv)


def resolve_source(args: argparse.Namespace) -> ResolvedSource:
    """The source, where its label maps come from and its split plan; bad flags raise ValueError."""
    kind = next((source for source in LABELLED_SOURCES if getattr(args, source.option)), None)
    if kind is not None:
        return resolve_labelled(kind, args)
    if args.label_source == "gt":
        raise ValueError("--label_source gt needs --voc_root or --ade_root: a plain folder has no ground truth")
    source_dir = Path(args.image_dir).resolve()
    if not source_dir.is_dir():
        raise ValueError(f"--image_dir {args.image_dir} is not a folder")
    plan = folder_plan(source_dir, check_fractions(args.split_fractions), args.seed)
    return ResolvedSource(None, source_dir, "predicted", plan)


def resolve_labelled(source: LabelledSource, args: argparse.Namespace) -> ResolvedSource:
    """A data set with ground truth (VOC, ADE20K), where its label maps come from and its plan."""
    if not 0 <= args.val_fraction < 1:
        raise ValueError(f"--val_fraction must be in [0, 1), got {args.val_fraction}")
    if source.label_set.void is None and args.void != "nearest":
        raise ValueError(f"--void {args.void}: the {source.name} annotations have no void value "
                         f"(0 means {source.label_set.class_names[0]!r} and stays 0); --void applies to "
                         f"--voc_root only")
    label_source = source.default_label_source if args.label_source == "auto" else args.label_source
    source_dir = source.find_root(Path(getattr(args, source.option))).resolve()
    plan = labelled_plan(source, source_dir, args.val_fraction, args.seed, with_masks=label_source == "gt")
    return ResolvedSource(source, source_dir, label_source, plan)


def check_data_root(source_dir: Path, data_root: Path) -> None:
    """The layout may not live inside the source, nor the source inside the layout's folders."""
    if source_dir == data_root.resolve() or source_dir in data_root.resolve().parents:
        raise ValueError(f"--data_root {data_root} is inside the source {source_dir}; choose a "
                         f"folder outside it so that the source is never touched")
    for folder in (IMAGES_FOLDER, LABEL_MAPS_FOLDER):
        if (data_root / folder).resolve() in (source_dir, *source_dir.parents):
            raise ValueError(f"the source {source_dir} is inside {data_root / folder}, which this "
                             f"command writes; move it or choose another --data_root")


def prepare(args: argparse.Namespace) -> int:
    """Check everything, place the images, make label maps and captions, report."""
    data_root = Path(args.data_root)
    try:
        source = resolve_source(args)
        check_data_root(source.folder, data_root)
        if not source.plan.items:
            raise ValueError(f"found no images to prepare in {source.folder}")
        settings = source_settings(args, source)
        check_manifest(data_root, settings)
        check_label_set_files(data_root, source.ground_truth)
        config = config_from_args(args)
        devices = resolve_devices(args)
    except (ValueError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rank_zero, plan = is_global_zero(), source.plan
    for warning in plan.warnings if rank_zero else ():
        print(f"warning: {warning}", file=sys.stderr)
    plan.failures.update(find_split_conflicts(plan.items, data_root))
    items = [item for item in plan.items if str(item.image) not in plan.failures]
    preparer = Preparer(data_root, args.link, config.encode.max_pixels, source.ground_truth, args.void)
    placed = [item for item in tqdm(items, desc="images", unit="image", disable=not rank_zero)
              if preparer.place(item)]
    if rank_zero:
        if read_json(data_root / MANIFEST_FILE) is None:
            atomic_write_json(data_root / MANIFEST_FILE, settings)
        if preparer.copied_instead:
            print("note: hard links were not possible for some files; they were copied", file=sys.stderr)
    try:
        if source.ground_truth is not None:
            caption_ground_truth(placed, preparer, config, devices)
        elif not encode_predicted(preparer, config, devices):
            return 0
    except (CheckpointError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return report(plan, preparer, data_root)


def main(argv: list[str] | None = None) -> int:
    return prepare(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
