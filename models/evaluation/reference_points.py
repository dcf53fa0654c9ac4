"""Published operating points of other codecs, drawn as reference markers on rate-distortion plots.

``published_points.csv`` (beside this module) holds one row per published point: ``dataset``
(``kodak``, ``clic2020``, ``div2k``, ...), ``method``, ``bpp``, the metrics a source gives
(``psnr``, ``ms_ssim``, ``lpips``, ``dists``, ``fid``, ``fid_patch``, ``kid``, ``kid_patch``;
empty when it gives none), ``source`` (the file or paper the numbers were copied from) and
``note`` (protocol details). They are the authors' numbers, not recomputed here: their test
sets, resizing and FID protocols are the sources', not necessarily this run's.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

PUBLISHED_POINTS = Path(__file__).with_name("published_points.csv")
METRIC_COLUMNS = ("psnr", "ms_ssim", "lpips", "dists", "fid", "fid_patch", "kid", "kid_patch")
REQUIRED_COLUMNS = ("dataset", "method", "bpp", "source")


@dataclass(frozen=True)
class ReferencePoint:
    """One published operating point."""

    dataset: str
    method: str
    bpp: float
    metrics: dict[str, float]  # only the metrics the source gives
    source: str
    note: str = ""

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "method": self.method, "bpp": self.bpp, **self.metrics,
                "source": self.source, "note": self.note}


def read_reference_points(path: str | Path = PUBLISHED_POINTS) -> list[ReferencePoint]:
    """Every row of a published-points file; ``ValueError`` naming the file and line otherwise."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            absent = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
            if absent:
                raise ValueError(f"{path}: no {', '.join(absent)} column")
            return [_point(row, path, reader.line_num) for row in reader]
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror or error})") from None


def _point(row: dict, path: Path, line: int) -> ReferencePoint:
    try:
        bpp = float(row["bpp"])
        metrics = {name: float(row[name]) for name in METRIC_COLUMNS if (row.get(name) or "").strip()}
    except ValueError as error:
        raise ValueError(f"{path}, line {line}: {error}") from None
    if not (row["dataset"] and row["method"] and row["source"]) or not bpp > 0 or not all(
            map(math.isfinite, metrics.values())):
        raise ValueError(f"{path}, line {line}: needs a dataset, a method, a source, a positive bpp and "
                         f"finite metric values")
    return ReferencePoint(row["dataset"].strip().lower(), row["method"].strip(), bpp, metrics,
                          row["source"].strip(), (row.get("note") or "").strip())


def reference_curves(points: list[ReferencePoint], dataset: str) -> dict[str, list[tuple[float, dict]]]:
    """The points of ``dataset`` as ``{method: [(bpp, metrics), ...]}``; ``ValueError`` naming the
    datasets there are when it has none."""
    curves: dict[str, list[tuple[float, dict]]] = {}
    for point in points:
        if point.dataset == dataset.lower():
            curves.setdefault(point.method, []).append((point.bpp, dict(point.metrics)))
    if not curves:
        known = sorted({point.dataset for point in points})
        raise ValueError(f"no published points for dataset {dataset!r}; there are: {', '.join(known)}")
    return curves
