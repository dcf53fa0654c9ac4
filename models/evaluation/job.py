"""Evaluating a folder of predictions against a folder of ground truths.

Files are paired by relative path and stem (``models.layout``). Each prediction is compared at
its ground truth's size: if the sizes differ it is resized with ``evaluate.resize_filter``
(Lanczos by default). A resize never distorts the aspect ratio: when the two aspect ratios
differ by more than the rounding of one pixel, the pair is reported as an error, or, with
``evaluate.aspect_mismatch: crop``, the prediction is first centre-cropped to the ground
truth's aspect ratio.

Outputs of one evaluation (``write_run``): ``metrics.csv`` (column ``image``, the ground
truth's relative path, then one lower-case column per metric) and ``summary.json`` (means over
images, set-level metrics, what was unavailable and why, and every file that was not paired
or could not be read).
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from models.bitstream import BitstreamError, read_code_file, read_sem
from models.config import Config
from models.evaluation.metrics import ImagePair, MetricSuite
from models.imageio import RESIZE_FILTERS, ImageReadError, atomic_write_bytes, atomic_write_json, read_rgb, thumbnail
from models.layout import (SEM_SUFFIX, CaptionIndex, StemIndex, bitstream_index, has_sem_files, index_by_stem,
                           pair_by_stem)
from models.rate import bits_per_pixel
from models.semantic_code import SemanticCode


@dataclass
class EvaluationInputs:
    """Where the files of one evaluation are."""

    ground_truth_dir: Path
    prediction_dir: Path
    bitstream_dir: Path | None = None  # files whose sizes give the rate (bpp)
    label_dir: Path | None = None  # the transmitted label maps
    captions: CaptionIndex = field(default_factory=lambda: CaptionIndex({}))


def label_map_index(label_dir: str | Path) -> StemIndex:
    """The transmitted label maps under ``label_dir``, by key: its ``.sem`` files, else its images."""
    if has_sem_files(label_dir):
        return index_by_stem(label_dir, suffix=SEM_SUFFIX)
    return index_by_stem(label_dir, images_only=True)


def load_sem_captions(folder: str | Path) -> CaptionIndex:
    """The captions stored in the ``.sem`` files under ``folder`` (unreadable files skipped)."""
    captions = {}
    index = index_by_stem(folder, suffix=SEM_SUFFIX)
    for key, path in index.files.items():
        try:
            captions[index.relpaths[key]] = read_sem(path).caption
        except BitstreamError:
            continue  # reported when its label map is read
    return CaptionIndex(captions)


def align_to_truth(prediction: Image.Image, size: tuple[int, int], resize_filter: str = "lanczos",
                   aspect_mismatch: str = "error") -> Image.Image:
    """``prediction`` at ``size`` (width, height) without distorting it; ``ValueError`` if impossible."""
    if prediction.size == tuple(size):
        return prediction
    width, height = size
    pred_width, pred_height = prediction.size
    # Rounding each side to whole pixels moves the cross products by at most half a perimeter.
    tolerance = max(width + height, pred_width + pred_height) / 2
    if abs(pred_width * height - pred_height * width) > tolerance:
        if aspect_mismatch != "crop":
            raise ValueError(
                f"aspect ratio differs: prediction {pred_width}x{pred_height}, ground truth "
                f"{width}x{height}; resizing would distort it (evaluate.aspect_mismatch=crop "
                f"centre-crops instead)")
        prediction = _centre_crop_to_aspect(prediction, width / height)
    return prediction.resize((width, height), RESIZE_FILTERS[resize_filter])


def _centre_crop_to_aspect(image: Image.Image, aspect: float) -> Image.Image:
    width, height = image.size
    if width / height > aspect:
        new_width = max(1, round(height * aspect))
        left = (width - new_width) // 2
        return image.crop((left, 0, left + new_width, height))
    new_height = max(1, round(width / aspect))
    top = (height - new_height) // 2
    return image.crop((0, top, width, top + new_height))


@dataclass
class RunResult:
    """Everything one evaluation found."""

    inputs: EvaluationInputs
    columns: list[str]
    rows: list[dict]
    means: dict[str, float | None]
    dataset: dict[str, float | None]
    unavailable: dict[str, str]
    notes: dict[str, str]
    errors: dict[str, str]
    missing_predictions: list[str]
    unmatched_predictions: list[str]
    ambiguous: dict[str, list[str]]

    @property
    def metrics(self) -> dict[str, float | None]:
        """Means over images and set-level metrics together."""
        return {**self.means, **self.dataset}


def evaluate_folder(suite: MetricSuite, config: Config, inputs: EvaluationInputs,
                    progress_bar: bool = True, description: str = "evaluate") -> RunResult:
    """Every metric of ``suite`` on every valid pair of ``inputs``."""
    suite.reset()
    pairing = pair_by_stem(inputs.ground_truth_dir, inputs.prediction_dir)
    labels = label_map_index(inputs.label_dir) if inputs.label_dir else None
    bitstreams = bitstream_index(inputs.bitstream_dir) if inputs.bitstream_dir else None
    rows, errors, gaps = [], {}, {"bpp": 0, "label map": 0, "caption": 0}
    for pair in tqdm(pairing.pairs, desc=description, unit="image", disable=not progress_bar):
        try:
            truth, prediction = _load_pair(pair.truth, pair.prediction, config)
        except ImageReadError as error:
            errors[str(error.path)] = error.reason
            continue
        code = _code(labels, pair.key, gaps, errors)
        caption = _caption(inputs.captions, pair.relpath)
        gaps["caption"] += bool(inputs.captions) and caption is None
        label_map, label_set = (code.label_map, code.label_set) if code is not None else (None, None)
        images = ImagePair(truth, prediction, suite.device, caption, label_map, label_set)
        row = {"image": pair.relpath, **suite.evaluate(images)}
        if bitstreams is not None:
            row["bpp"] = _bpp(bitstreams, pair.key, truth.shape, gaps)
        rows.append(row)
    return _result(suite, inputs, pairing, rows, errors, gaps, bitstreams is not None)


def _load_pair(truth_path: Path, prediction_path: Path, config: Config) -> tuple[np.ndarray, np.ndarray]:
    truth = read_rgb(truth_path)
    prediction = read_rgb(prediction_path)
    try:
        prediction = align_to_truth(prediction, truth.size, config.evaluate.resize_filter,
                                    config.evaluate.aspect_mismatch)
    except ValueError as error:
        raise ImageReadError(prediction_path, str(error)) from None
    return np.asarray(truth), np.asarray(prediction)


def _caption(captions: CaptionIndex, relpath: str) -> str | None:
    try:
        return captions.get(relpath)
    except ValueError:  # several captions match: none is used, and the image counts as without one
        return None


def _code(labels: StemIndex | None, key: str, gaps: dict, errors: dict) -> SemanticCode | None:
    """The transmitted code (label map and its label set) of image ``key``, if there is one."""
    if labels is None:
        return None
    if key not in labels:
        gaps["label map"] += 1
        return None
    try:
        return read_code_file(labels.files[key])
    except ImageReadError as error:
        errors[error.path] = error.reason
        gaps["label map"] += 1
        return None


def _bpp(bitstreams: StemIndex, key: str, shape: tuple, gaps: dict) -> float:
    if key not in bitstreams:
        gaps["bpp"] += 1
        return math.nan
    height, width = shape[:2]
    return bits_per_pixel(bitstreams.files[key].stat().st_size, width, height)


def _result(suite: MetricSuite, inputs: EvaluationInputs, pairing, rows: list[dict], errors: dict,
            gaps: dict, with_bpp: bool) -> RunResult:
    columns = suite.columns + (["bpp"] if with_bpp else [])
    dataset, notes = suite.dataset_metrics() if rows else ({}, {"all": "no valid pairs"})
    for what, count in gaps.items():
        if count:
            notes[what] = f"missing for {count} image(s); their {what}-based metrics are empty"
    means = {column: _finite_mean([row.get(column, math.nan) for row in rows]) for column in columns}
    for column in columns:
        infinite = sum(math.isinf(row.get(column, math.nan)) for row in rows)
        if infinite:  # PSNR of identical images
            notes[column] = f"infinite for {infinite} image(s) (identical pairs), left out of the mean"
    return RunResult(inputs, columns, rows, means, {k: _finite(v) for k, v in dataset.items()},
                     dict(suite.unavailable), notes, errors, pairing.missing_predictions,
                     pairing.unmatched_predictions, pairing.ambiguous)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _finite_mean(values: list[float]) -> float | None:
    finite = [value for value in values if math.isfinite(value)]
    return float(np.mean(finite)) if finite else None


def write_run(result: RunResult, output_dir: Path) -> None:
    """Write ``metrics.csv`` and ``summary.json`` for one evaluation (atomically)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["image"] + result.columns, lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(output_dir / "metrics.csv", text.getvalue().encode("utf-8"))
    atomic_write_json(output_dir / "summary.json", summary(result))


def summary(result: RunResult) -> dict:
    """The JSON-ready summary of one evaluation."""
    inputs = result.inputs
    return {
        "ground_truth_path": str(inputs.ground_truth_dir),
        "prediction_path": str(inputs.prediction_dir),
        "bitstream_dir": str(inputs.bitstream_dir) if inputs.bitstream_dir else None,
        "num_pairs": len(result.rows),
        "metrics": result.metrics,
        "unavailable": result.unavailable,
        "notes": result.notes,
        "errors": result.errors,
        "missing_predictions": result.missing_predictions,
        "unmatched_predictions": result.unmatched_predictions,
        "ambiguous": result.ambiguous,
    }


# --- several methods against one ground truth ---------------------------------------------------

METHOD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class MethodSpec:
    """One ``--method NAME=PREDICTIONS[,BITSTREAMS]`` operating point."""

    name: str
    prediction_dir: Path
    bitstream_dir: Path | None = None


def parse_method(text: str) -> MethodSpec:
    """Parse ``NAME=PREDICTION_DIR`` or ``NAME=PREDICTION_DIR,BITSTREAM_DIR``."""
    name, sep, paths = text.partition("=")
    if not sep or not paths:
        raise ValueError(f"--method {text!r} must look like NAME=PREDICTION_DIR[,BITSTREAM_DIR]")
    if not METHOD_NAME.match(name):
        raise ValueError(f"--method name {name!r} may only hold letters, digits and . _ + -")
    prediction, _, bitstream = paths.partition(",")
    for folder in filter(None, (prediction, bitstream)):
        if not Path(folder).is_dir():
            raise ValueError(f"--method {name}: {folder} is not a folder")
    return MethodSpec(name, Path(prediction), Path(bitstream) if bitstream else None)


def run_folders(methods: list[MethodSpec]) -> list[str]:
    """A folder name per run: the method's name, numbered when a name has several runs."""
    totals = {name: [m.name for m in methods].count(name) for name in {m.name for m in methods}}
    seen: dict[str, int] = {}
    folders = []
    for method in methods:
        seen[method.name] = seen.get(method.name, 0) + 1
        folders.append(method.name if totals[method.name] == 1 else f"{method.name}-{seen[method.name]}")
    return folders


def rate_distortion_curves(runs: list[tuple[MethodSpec, RunResult]]) -> dict[str, list]:
    """Per method, its operating points (mean bpp, metrics); runs without a rate are left out."""
    curves: dict[str, list] = {}
    for method, result in runs:
        bpp = result.means.get("bpp")
        if bpp is not None:
            curves.setdefault(method.name, []).append((bpp, result.metrics))
    return curves


def comparison_summary(ground_truth_dir: Path, runs: list[tuple[MethodSpec, RunResult]],
                       folders: list[str]) -> dict:
    """The JSON-ready summary of a multi-method evaluation."""
    return {
        "ground_truth_path": str(ground_truth_dir),
        "runs": [{"method": method.name, "folder": folder, **summary(result)}
                 for (method, result), folder in zip(runs, folders)],
    }


def grid_rows(ground_truth_dir: Path, runs: list[tuple[MethodSpec, RunResult]], config: Config,
              count: int, height: int = 200) -> tuple[list[list[np.ndarray]], list[str]]:
    """Thumbnails of the first ``count`` images that every run evaluated: truth, then each run."""
    shared = set.intersection(*({row["image"] for row in result.rows} for _, result in runs))
    relpaths = sorted(shared)[:count]
    predictions = [{pair.relpath: pair.prediction for pair in pair_by_stem(ground_truth_dir,
                                                                           method.prediction_dir).pairs}
                   for method, _ in runs]
    rows = []
    for relpath in relpaths:
        truth = read_rgb(ground_truth_dir / relpath)
        images = [truth] + [align_to_truth(read_rgb(paths[relpath]), truth.size,
                                           config.evaluate.resize_filter, config.evaluate.aspect_mismatch)
                            for paths in predictions]
        rows.append([thumbnail(image, height) for image in images])
    return rows, relpaths
