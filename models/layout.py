"""The data-folder layout that every stage reads and writes: file names, captions, per-process records.

- ``prompts.json``: ``{relative image path: caption}`` (``read_prompts``, ``write_prompts``);
- ``.sem`` files (``SEM_SUFFIX``) and label maps (palette PNGs) named after the image they came from;
- *stems*: reconstructions, compressed files and label maps keep the relative path of the image
  they came from but may change its extension (``train/2007_000032.jpg`` ->
  ``train/2007_000032.png`` or ``.sem``), so files are matched on their key, the relative path
  without the last extension, and never on numbers inside file names;
- per-process records (``RankRecords``): while a job runs on several processes, each appends
  JSON lines to its own ``.<name>.rank<R>.jsonl``; rank 0 folds them into the job's file at the end
  (and the next run folds what an interrupted one left);
- the training layout: ``<data_root>/original_images/<split>/`` (photographs) and
  ``<data_root>/segmented_images/<split>/`` (label maps and ``prompts.json``), ``SPLITS``;
- ``label_set.json``: the label set of the maps in a folder and below (``write_label_set``,
  ``find_label_set``); a folder without one holds VOC maps, as before label sets existed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple, TypeVar

from models.imageio import InputFile, atomic_write_json, is_image_name, output_errors, read_json, walk_files
from models.palettes import LABEL_SETS, VOC, LabelSet, label_set_from_dict

PROMPTS_FILE = "prompts.json"
LABEL_SET_FILE = "label_set.json"
SEM_SUFFIX = ".sem"  # the file extension of semantic codes (models.bitstream)
LABEL_MAP_SUFFIX = ".png"
IMAGE_OUTPUT_SUFFIX = ".png"  # images the project writes: reconstructions, decoded baselines
SPLITS = ("train", "val", "test")
IMAGES_FOLDER, LABEL_MAPS_FOLDER = "original_images", "segmented_images"  # of the training layout
ENCODE_FORMATS = ("both", "sem", "png")  # what an encoding job writes: .sem files, label-map PNGs + prompts.json
T = TypeVar("T")


def stem_key(relpath: str) -> str:
    """The matching key of a relative path: ``"a/b/img.v2.jpg"`` -> ``"a/b/img.v2"``."""
    path = PurePosixPath(relpath)
    return str(path.with_suffix("")) if path.suffix else str(path)


def output_relpath(relpath: str, suffix: str) -> str:
    """Where a job writes its output for the input at ``relpath``: the same path and stem, ``suffix``."""
    return stem_key(relpath) + suffix


def label_map_relpath(relpath: str) -> str:
    """Where the label map of the image at ``relpath`` goes, relative to a label-map folder."""
    return output_relpath(relpath, LABEL_MAP_SUFFIX)


def sem_relpath(relpath: str) -> str:
    """Where the ``.sem`` file of the image at ``relpath`` goes, relative to an output folder."""
    return output_relpath(relpath, SEM_SUFFIX)


def split_folders(data_root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """The image folder and the label-map folder (which holds ``prompts.json``) of ``split`` in the
    training layout."""
    return Path(data_root) / IMAGES_FOLDER / split, Path(data_root) / LABEL_MAPS_FOLDER / split


def write_label_set(folder: str | os.PathLike, label_set: LabelSet) -> None:
    """Record the label set of the maps under ``folder`` (atomically)."""
    atomic_write_json(Path(folder) / LABEL_SET_FILE, label_set.to_dict())


def find_label_set(path: str | os.PathLike, name: str | None = None, root: str | os.PathLike | None = None) -> LabelSet:
    """The label set of the map at (or the maps in) ``path``: the nearest ``label_set.json`` in its
    folder or a folder above (up to ``root``, if given); VOC where there is none. With ``name``
    (what a ``.sem`` file says), a built-in set, or the nearest sidecar of that name; ``ValueError``
    naming the file for a sidecar that cannot be read, or if no sidecar defines ``name``."""
    if name in LABEL_SETS:
        return LABEL_SETS[name]
    path = Path(path).absolute()  # not resolved: the sidecar sits beside the link, not its target
    top = Path(root).absolute() if root is not None else None
    folders = ([path] if path.is_dir() else []) + list(path.parents)
    if top is not None and top in folders:
        folders = folders[:folders.index(top) + 1]
    for folder in folders:
        sidecar = folder / LABEL_SET_FILE
        try:
            data = read_json(sidecar)
        except (OSError, ValueError) as error:
            raise ValueError(f"{sidecar}: unreadable ({error})") from None
        if data is not None and not isinstance(data, dict):
            raise ValueError(f"{sidecar}: expected a JSON object (name, classes, colors), got {type(data).__name__}")
        if data is not None and (name is None or data.get("name") == name):
            try:
                return label_set_from_dict(data)
            except ValueError as error:
                raise ValueError(f"{sidecar}: {error}") from None
    if name is None:
        return VOC
    raise ValueError(f"{path}: label set {name!r} is not built in and no {LABEL_SET_FILE} above it defines it")


def read_prompts(path: str | os.PathLike, required: bool = True) -> dict[str, str]:
    """The captions of a prompts file, ``{relative image path: caption}``; a missing file is an
    error unless not ``required`` (then ``{}``). Anything else raises ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise ValueError(f"prompts file not found: {path}")
        return {}
    try:
        prompts = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ValueError(f"{path}: expected a JSON object {{relative image path: caption}}")
    return prompts


class CaptionIndex:
    """Captions keyed by the original images' relative paths, found for any file of the same path
    and stem (a label map, a ``.sem`` file, a reconstruction); keys written without folders are
    also found by file name."""

    def __init__(self, prompts: dict[str, str]):
        self.prompts = prompts
        self.by_stem: dict[str, list[str]] = {}
        self.by_name: dict[str, list[str]] = {}
        for key in prompts:
            self.by_stem.setdefault(stem_key(key), []).append(key)
            if "/" not in key:
                self.by_name.setdefault(PurePosixPath(key).stem, []).append(key)

    def __len__(self) -> int:
        return len(self.prompts)

    def get(self, relpath: str) -> str | None:
        """The caption of the file at ``relpath``, or None; ``ValueError`` when several match."""
        keys = self.by_stem.get(stem_key(relpath)) or self.by_name.get(PurePosixPath(relpath).stem, [])
        if len(keys) > 1:
            raise ValueError(f"several captions match it ({', '.join(sorted(keys))})")
        return self.prompts[keys[0]] if keys else None


def write_prompts(path: str | os.PathLike, prompts: dict[str, str]) -> None:
    """Write a prompts file atomically, sorted by path."""
    atomic_write_json(path, dict(sorted(prompts.items())))


@dataclass(frozen=True)
class RankRecords:
    """The per-process JSON-lines files ``<folder>/.<name>.rank<R>.jsonl`` of one job."""

    folder: Path
    name: str  # "prompts", "manifest", ...

    def path(self, rank: int) -> Path:
        return self.folder / f".{self.name}.rank{rank}.jsonl"

    def files(self) -> list[Path]:
        return sorted(self.folder.glob(f".{self.name}.rank*.jsonl"))

    def append(self, rank: int, records: list[dict]) -> None:
        """Append records as lines, first ending a line that an interruption left unfinished."""
        if not records:
            return
        path = self.path(rank)
        with output_errors(path):
            self._append(path, records)

    @staticmethod
    def _append(path: Path, records: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as handle:
            if handle.tell() > 0:
                with open(path, "rb") as existing:
                    existing.seek(-1, 2)
                    if existing.read(1) != b"\n":
                        handle.write(b"\n")
            text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
            handle.write(text.encode("utf-8"))

    def read(self) -> list[dict]:
        """Every complete record, file by file; a line cut short by an interruption is skipped.
        Raises ``FileNotFoundError`` when a file vanishes while it is read (see ``read_consistently``)."""
        records = []
        for path in self.files():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
        return records

    def remove(self) -> None:
        """Delete the files (after their records were merged into the job's file)."""
        for path in self.files():
            path.unlink(missing_ok=True)


def read_consistently(read: Callable[[], T], attempts: int = 100) -> T:
    """``read()`` (a job's file plus its ``RankRecords``) again while rank 0 merges under it.

    Rank 0 writes the merged file before it deletes the per-process files, so a file that
    vanishes means the merged file now holds its records, and reading again gives the same ones.
    """
    for _ in range(attempts):
        try:
            return read()
        except FileNotFoundError:
            continue
    raise RuntimeError("a job's records kept changing while they were read")


@dataclass
class InputListing:
    """The files of an input folder that a job will read, one per stem."""

    files: list[InputFile] = field(default_factory=list)  # sorted, usable
    ignored: list[str] = field(default_factory=list)  # relpaths the filter does not take
    clashes: dict[str, str] = field(default_factory=dict)  # relpath -> earlier relpath with its stem


def list_inputs(root: str | os.PathLike, accept: Callable[[str], bool] = is_image_name) -> InputListing:
    """The files under ``root`` that ``accept`` takes (by relative path), in sorted order. Outputs
    are named by stem (``a.jpg`` and ``a.png`` would both write ``a.png``), so a file whose stem an
    earlier one has is a clash, not an input."""
    listing, claimed = InputListing(), {}
    for item in walk_files(root):
        key = stem_key(item.relpath)
        if not accept(item.relpath):
            listing.ignored.append(item.relpath)
        elif key in claimed:
            listing.clashes[item.relpath] = claimed[key]
        else:
            claimed[key] = item.relpath
            listing.files.append(item)
    return listing


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
