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
from models.evaluation.bd_rate import BDError, bd_quality, bd_rate
from models.evaluation.metrics import ImagePair, MetricSuite, SetMetrics
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
    counts: dict[str, int]  # images behind each mean; samples (images or patches) behind FID/KID
    missing: dict[str, dict[str, str]]  # column -> {image: why it has no value}
    small_sample: dict[str, str]  # set-level metric -> why its sample is smaller than recommended
    unavailable: dict[str, str]
    notes: dict[str, str]
    errors: dict[str, str]
    missing_predictions: list[str]
    unmatched_predictions: list[str]
    ambiguous: dict[str, list[str]]
    left_out: dict[str, str] = field(default_factory=dict)  # image -> why it was not compared
    failures: dict[str, int] = field(default_factory=dict)  # column -> pairs it failed on unforeseen

    @property
    def metrics(self) -> dict[str, float | None]:
        """Means over images and set-level metrics together."""
        return {**self.means, **self.dataset}


def evaluate_folder(suite: MetricSuite, config: Config, inputs: EvaluationInputs, progress_bar: bool = True,
                    description: str = "evaluate", left_out: dict[str, str] | None = None) -> RunResult:
    """Every metric of ``suite`` on every valid pair of ``inputs`` but the images in ``left_out``
    (relative path -> why: not compared with the other methods of a run)."""
    suite.reset()
    left_out, failures_before = left_out or {}, dict(suite.failures)
    pairing = pair_by_stem(inputs.ground_truth_dir, inputs.prediction_dir)
    labels = label_map_index(inputs.label_dir) if inputs.label_dir else None
    bitstreams = bitstream_index(inputs.bitstream_dir) if inputs.bitstream_dir else None
    rows, errors, missing = [], {}, {}
    for pair in tqdm(pairing.pairs, desc=description, unit="image", disable=not progress_bar):
        if pair.relpath in left_out:
            continue
        try:
            truth, prediction = _load_pair(pair.truth, pair.prediction, config)
        except ImageReadError as error:
            errors[str(error.path)] = error.reason
            continue
        code = _code(labels, pair.key, errors)
        label_map, label_set = (code.label_map, code.label_set) if code is not None else (None, None)
        images = ImagePair(truth, prediction, suite.device, _caption(inputs.captions, pair.relpath), label_map,
                           label_set)
        values, reasons = suite.evaluate(images)
        row = {"image": pair.relpath, **values}
        if bitstreams is not None:
            row["bpp"] = _bpp(bitstreams, pair.key, truth.shape)
            if math.isnan(row["bpp"]):
                reasons["bpp"] = f"no file of this stem in {inputs.bitstream_dir}"
        for column, reason in reasons.items():
            missing.setdefault(column, {})[pair.relpath] = reason
        rows.append(row)
    result = _result(suite, inputs, pairing, rows, errors, missing, bitstreams is not None, left_out)
    result.failures = {column: count - failures_before.get(column, 0) for column, count in suite.failures.items()
                       if count > failures_before.get(column, 0)}
    return result


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


def _code(labels: StemIndex | None, key: str, errors: dict) -> SemanticCode | None:
    """The transmitted code (label map and its label set) of image ``key``, if there is one."""
    if labels is None or key not in labels:
        return None
    try:
        return read_code_file(labels.files[key])
    except ImageReadError as error:
        errors[error.path] = error.reason
        return None


def _bpp(bitstreams: StemIndex, key: str, shape: tuple) -> float:
    if key not in bitstreams:
        return math.nan
    height, width = shape[:2]
    return bits_per_pixel(bitstreams.files[key].stat().st_size, width, height)


def _result(suite: MetricSuite, inputs: EvaluationInputs, pairing, rows: list[dict], errors: dict,
            missing: dict, with_bpp: bool, left_out: dict[str, str]) -> RunResult:
    columns = suite.columns + (["bpp"] if with_bpp else [])
    dataset = suite.dataset_metrics() if rows else SetMetrics(notes={"all": "no valid pairs"})
    means, counts, notes = column_means(rows, columns)
    counts.update(dataset.samples)
    notes.update(dataset.notes)
    return RunResult(inputs, columns, rows, means, {k: _finite(v) for k, v in dataset.values.items()}, counts,
                     missing, dataset.small_sample, dict(suite.unavailable), notes, errors,
                     pairing.missing_predictions, pairing.unmatched_predictions, pairing.ambiguous, dict(left_out))


def column_means(rows: list[dict], columns: list[str]) -> tuple[dict[str, float | None], dict[str, int], dict]:
    """Per column: the mean of its finite values, how many there are, and a note on infinite ones."""
    means, counts, notes = {}, {}, {}
    for column in columns:
        values = [row.get(column, math.nan) for row in rows]
        finite = [value for value in values if math.isfinite(value)]
        means[column] = float(np.mean(finite)) if finite else None
        counts[column] = len(finite)
        infinite = sum(math.isinf(value) for value in values)
        if infinite:  # PSNR of identical images
            notes[column] = f"infinite for {infinite} image(s) (identical pairs), left out of the mean"
    return means, counts, notes


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def write_run(result: RunResult, output_dir: Path) -> None:
    """Write ``metrics.csv`` and ``summary.json`` for one evaluation (atomically)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["image"] + result.columns, lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    atomic_write_bytes(output_dir / "metrics.csv", text.getvalue().encode("utf-8"))
    atomic_write_json(output_dir / "summary.json", summary(result))


def _csv_value(value):
    """Floats with 6 significant digits; a missing value (NaN) as an empty cell."""
    if not isinstance(value, float):
        return value
    return "" if math.isnan(value) else f"{value:.6g}"


def summary(result: RunResult) -> dict:
    """The JSON-ready summary of one evaluation."""
    inputs = result.inputs
    return {
        "ground_truth_path": str(inputs.ground_truth_dir),
        "prediction_path": str(inputs.prediction_dir),
        "bitstream_dir": str(inputs.bitstream_dir) if inputs.bitstream_dir else None,
        "num_pairs": len(result.rows),
        "metrics": result.metrics,
        "counts": result.counts,
        "small_sample": result.small_sample,
        "missing": {column: {"count": len(images), "images": images} for column, images in result.missing.items()},
        "failures": result.failures,
        "unavailable": result.unavailable,
        "notes": result.notes,
        "errors": result.errors,
        "missing_predictions": result.missing_predictions,
        "unmatched_predictions": result.unmatched_predictions,
        "ambiguous": result.ambiguous,
        "left_out": result.left_out,
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


def unshared_images(ground_truth_dir: Path, methods: list[MethodSpec], folders: list[str]) -> list[dict[str, str]]:
    """Per method, the ground truths it has a prediction for that another method lacks (relative
    path -> why): the methods of a run are compared on the images all of them have."""
    paired = [{pair.relpath for pair in pair_by_stem(ground_truth_dir, method.prediction_dir).pairs}
              for method in methods]
    shared = set.intersection(*paired)
    return [{relpath: "no prediction in " + ", ".join(f for f, other in zip(folders, paired) if relpath not in other)
             for relpath in sorted(images - shared)} for images in paired]


def keep_shared_rows(runs: list[RunResult], folders: list[str]) -> None:
    """Restrict every run's rows and means to the images every run scored (an image unreadable
    in one method leaves the others too); set-level metrics cannot be restricted and say so."""
    scored = [{row["image"] for row in result.rows} for result in runs]
    shared = set.intersection(*scored) if scored else set()
    for result, images in zip(runs, scored):
        dropped = sorted(images - shared)
        if not dropped:
            continue
        for relpath in dropped:
            result.left_out[relpath] = "not scored in " + ", ".join(
                f for f, other in zip(folders, scored) if relpath not in other)
        result.rows = [row for row in result.rows if row["image"] in shared]
        means, counts, notes = column_means(result.rows, result.columns)
        result.means.update(means)
        result.counts.update(counts)
        for column in result.columns:
            result.notes.pop(column, None)
        result.notes.update(notes)
        result.missing = {column: {relpath: reason for relpath, reason in by_image.items() if relpath in shared}
                          for column, by_image in result.missing.items()}
        for name in result.dataset:
            if not name.endswith("_std"):
                result.notes[name] = (f"computed on all {len(images)} evaluated images, {len(dropped)} more than the "
                                      f"{len(shared)} every method scored (set-level, not recomputed)")


def rate_distortion_curves(runs: list[tuple[MethodSpec, RunResult]]) -> dict[str, list]:
    """Per method, its operating points (mean bpp, metrics); runs without a rate are left out."""
    curves: dict[str, list] = {}
    for method, result in runs:
        bpp = result.means.get("bpp")
        if bpp is not None:
            curves.setdefault(method.name, []).append((bpp, result.metrics))
    return curves


BD_METRICS = ("psnr", "ms_ssim", "lpips", "dists", "fid", "fid_patch")  # Bjøntegaard deltas for these


def bjontegaard_table(curves: dict[str, list], anchor: str) -> dict[str, dict[str, dict]]:
    """``{metric: {method: {"bd_rate": percent, "bd_quality": delta}}}`` of every method's curve
    against ``anchor``'s, for the ``BD_METRICS`` the anchor has; a delta that cannot be computed
    is None, with the reason under ``"bd_rate_why"`` or ``"bd_quality_why"``."""
    table: dict[str, dict[str, dict]] = {}
    for metric in BD_METRICS:
        anchor_curve = [(bpp, values.get(metric)) for bpp, values in curves.get(anchor, [])]
        if not any(value is not None for _, value in anchor_curve):
            continue
        table[metric] = {}
        for method, points in curves.items():
            curve = [(bpp, values.get(metric)) for bpp, values in points]
            entry = table[metric][method] = {}
            for name, delta in (("bd_rate", bd_rate), ("bd_quality", bd_quality)):
                try:
                    entry[name] = delta(anchor_curve, curve)
                except BDError as error:
                    entry[name], entry[name + "_why"] = None, str(error)
    return table


def comparison_summary(ground_truth_dir: Path, runs: list[tuple[MethodSpec, RunResult]], folders: list[str],
                       anchor: str | None = None, bd: dict | None = None, references: list | None = None) -> dict:
    """The JSON-ready summary of a multi-method evaluation (with its Bjøntegaard table and the
    published points drawn beside it)."""
    return {
        "ground_truth_path": str(ground_truth_dir),
        "runs": [{"method": method.name, "folder": folder, **summary(result)}
                 for (method, result), folder in zip(runs, folders)],
        "bd_anchor": anchor,
        "bd": bd or {},
        "reference_points": references or [],  # the published points drawn on the plots
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
