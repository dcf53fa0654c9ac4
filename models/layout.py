"""Matching files across folders by relative path and stem.

Reconstructions, compressed files and label maps keep the relative path of the image they came
from but may change its extension (``train/2007_000032.jpg`` -> ``train/2007_000032.png`` or
``.sem``). Files are therefore matched on their *key*, the relative path without the last
extension, and never on numbers inside file names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from models.bitstream import SEM_SUFFIX
from models.imageio import is_image_name, walk_files


def stem_key(relpath: str) -> str:
    """The matching key of a relative path: ``"a/b/img.v2.jpg"`` -> ``"a/b/img.v2"``."""
    path = PurePosixPath(relpath)
    return str(path.with_suffix("")) if path.suffix else str(path)


@dataclass
class StemIndex:
    """Files under one folder, by key; keys shared by several files are ambiguous."""

    root: Path
    files: dict[str, Path] = field(default_factory=dict)  # key -> absolute path
    relpaths: dict[str, str] = field(default_factory=dict)  # key -> relative path
    ambiguous: dict[str, list[str]] = field(default_factory=dict)  # key -> the clashing relpaths
    ignored: list[str] = field(default_factory=list)  # files skipped by the filter

    def __contains__(self, key: str) -> bool:
        return key in self.files


def index_by_stem(root: str | os.PathLike, images_only: bool = True,
                  suffix: str | None = None) -> StemIndex:
    """Index the files under ``root`` by key (images only, or only ``suffix`` files, if asked)."""
    index = StemIndex(root=Path(root))
    for item in walk_files(root):
        wanted = item.relpath.lower().endswith(suffix.lower()) if suffix else (
            not images_only or is_image_name(item.relpath))
        if not wanted:
            index.ignored.append(item.relpath)
            continue
        key = stem_key(item.relpath)
        if key in index.ambiguous:
            index.ambiguous[key].append(item.relpath)
        elif key in index.files:
            index.ambiguous[key] = [index.relpaths.pop(key), item.relpath]
            del index.files[key]
        else:
            index.files[key] = item.path
            index.relpaths[key] = item.relpath
    return index


class Pair(NamedTuple):
    """A ground truth and the prediction with the same key."""

    key: str
    relpath: str  # of the ground truth, relative to its folder
    truth: Path
    prediction: Path


@dataclass
class Pairing:
    """Ground-truth/prediction pairs and everything that could not be paired."""

    pairs: list[Pair]  # sorted by key
    missing_predictions: list[str]  # ground-truth relpaths without a prediction
    unmatched_predictions: list[str]  # prediction relpaths without a ground truth
    ambiguous: dict[str, list[str]]  # "folder: key" -> relpaths sharing that key


def pair_by_stem(ground_truth_dir: str | os.PathLike, prediction_dir: str | os.PathLike) -> Pairing:
    """Pair the images of two folders by key."""
    truth, prediction = index_by_stem(ground_truth_dir), index_by_stem(prediction_dir)
    pairs = [Pair(key, truth.relpaths[key], truth.files[key], prediction.files[key])
             for key in sorted(truth.files) if key in prediction]
    ambiguous = {f"{index.root}: {key}": names
                 for index in (truth, prediction) for key, names in index.ambiguous.items()}
    return Pairing(
        pairs=pairs,
        missing_predictions=[truth.relpaths[k] for k in sorted(truth.files) if k not in prediction],
        unmatched_predictions=[prediction.relpaths[k] for k in sorted(prediction.files)
                               if k not in truth and k not in truth.ambiguous],
        ambiguous=ambiguous,
    )


def has_sem_files(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds ``.sem`` files (then they, not label-map PNGs, were transmitted)."""
    return any(Path(folder).rglob(f"*{SEM_SUFFIX}"))


def bitstream_index(folder: str | os.PathLike, suffix: str | None = None) -> StemIndex:
    """The files whose sizes are the rate, by key: ``suffix`` files if given, else the ``.sem``
    files if there are any (process_input writes label-map PNGs next to them), else every file."""
    if suffix is None and has_sem_files(folder):
        suffix = SEM_SUFFIX
    return index_by_stem(folder, images_only=False, suffix=suffix)
