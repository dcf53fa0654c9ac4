"""Bjøntegaard deltas between rate-distortion curves (VCEG-M33), with piecewise cubic interpolation.

``bd_rate``: the average difference in rate at equal quality, in percent of the anchor's rate
(negative: the tested method needs fewer bits). Both curves are interpolated as log(rate)
against the metric with monotone piecewise cubic Hermite interpolation (PCHIP, as the JVET
common test conditions do instead of the original cubic polynomial fit) and integrated over the
metric range both curves cover; the mean log-rate difference d gives exp(d) - 1.

``bd_quality``: the average difference in the metric at equal rate (BD-PSNR for PSNR),
integrated over the log-rate range both curves cover.

A curve needs at least two operating points whose metric rises or falls strictly with the rate
(a noisy FID curve that does not is refused with its points, not interpolated); the metric can
be better higher (PSNR) or lower (LPIPS, FID): the delta at equal quality does not depend on the
direction.
"""

from __future__ import annotations

import math

import numpy as np

Curve = list[tuple[float, float]]  # (bits per pixel, metric value) per operating point


class BDError(ValueError):
    """The curves cannot be compared; the message says why."""


def _interpolated_mean(x: np.ndarray, y: np.ndarray, low: float, high: float) -> float:
    """Mean of the PCHIP interpolant of ``y`` over ``x`` (sorted, distinct) on [low, high]."""
    from scipy.interpolate import PchipInterpolator

    return float(PchipInterpolator(x, y).integrate(low, high)) / (high - low)


def _prepare(curve: Curve, axis: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) sorted by x, where x is the ``axis`` column (0: log rate, 1: metric); ``BDError``
    unless the metric rises or falls strictly with the rate (otherwise the rate at a given
    quality, and so any delta, is not defined)."""
    points = [(math.log(rate), value) for rate, value in curve
              if rate is not None and value is not None and rate > 0 and math.isfinite(rate) and math.isfinite(value)]
    if len(points) < 2:
        raise BDError(f"{name} has {len(points)} usable operating point(s), at least 2 are needed")
    by_rate = np.asarray(sorted(points))
    rate_steps, metric_steps = np.diff(by_rate[:, 0]), np.diff(by_rate[:, 1])
    if np.any(rate_steps <= 0) or not (np.all(metric_steps > 0) or np.all(metric_steps < 0)):
        raise BDError(f"{name}'s metric does not rise or fall strictly with its rate "
                      f"({', '.join(f'{math.exp(r):.4g} bpp: {v:.4g}' for r, v in by_rate)})")
    array = by_rate[np.argsort(by_rate[:, axis])]
    return array[:, axis], array[:, 1 - axis]


def _overlap(anchor: np.ndarray, test: np.ndarray, what: str) -> tuple[float, float]:
    low, high = max(anchor.min(), test.min()), min(anchor.max(), test.max())
    if not high > low:
        raise BDError(f"the curves share no {what} range")
    return low, high


def bd_rate(anchor: Curve, test: Curve) -> float:
    """Average rate difference of ``test`` against ``anchor`` at equal metric value, in percent."""
    anchor_metric, anchor_log_rate = _prepare(anchor, 1, "the anchor")
    test_metric, test_log_rate = _prepare(test, 1, "the tested method")
    low, high = _overlap(anchor_metric, test_metric, "metric")
    difference = (_interpolated_mean(test_metric, test_log_rate, low, high)
                  - _interpolated_mean(anchor_metric, anchor_log_rate, low, high))
    return 100.0 * math.expm1(difference)


def bd_quality(anchor: Curve, test: Curve) -> float:
    """Average metric difference of ``test`` against ``anchor`` at equal rate (test - anchor)."""
    anchor_log_rate, anchor_metric = _prepare(anchor, 0, "the anchor")
    test_log_rate, test_metric = _prepare(test, 0, "the tested method")
    low, high = _overlap(anchor_log_rate, test_log_rate, "rate")
    return (_interpolated_mean(test_log_rate, test_metric, low, high)
            - _interpolated_mean(anchor_log_rate, anchor_metric, low, high))
