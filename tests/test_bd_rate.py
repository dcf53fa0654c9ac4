"""Bjøntegaard deltas: the identities and the exact half-rate case, alone and through evaluate.py."""

import io
import json
import numpy as np
import pytest
from PIL import Image

import evaluate
from models.evaluation.bd_rate import BDError, bd_quality, bd_rate
from tests.test_evaluate import small_photos

PSNR_CURVE = [(0.05, 24.0), (0.1, 26.5), (0.2, 28.0), (0.4, 31.2)]  # deliberately not linear in log rate
LPIPS_CURVE = [(0.05, 0.31), (0.1, 0.22), (0.2, 0.18), (0.4, 0.09)]  # lower is better


@pytest.mark.parametrize("curve", [PSNR_CURVE, LPIPS_CURVE])
def test_a_curve_against_itself_is_zero_and_half_the_bytes_is_minus_fifty_percent(curve):
    assert bd_rate(curve, curve) == 0.0 and bd_quality(curve, curve) == 0.0
    half = [(rate / 2, value) for rate, value in curve]
    assert bd_rate(curve, half) == pytest.approx(-50.0, abs=1e-9)
    assert bd_rate(half, curve) == pytest.approx(100.0, abs=1e-9)
    better = bd_quality(curve, half)  # at equal rate the half-rate method has the quality of twice the rate
    assert better > 0 if curve is PSNR_CURVE else better < 0


def test_only_the_shared_range_counts_and_unusable_curves_say_why():
    # log2(rate) = (q - 30) / 2 against (q - 30) / 3: linear, so PCHIP is exact; they share q in
    # [32, 34], where the mean log2 difference is -(33 - 30) / 6 = -0.5: 2 ** -0.5 - 1 = -29.29%.
    anchor = [(2 ** ((q - 30) / 2), q) for q in (30, 32, 34)]
    test = [(2 ** ((q - 30) / 3), q) for q in (32, 35, 38)]
    assert bd_rate(anchor, test) == pytest.approx(100 * (2 ** -0.5 - 1), abs=1e-9)
    # at equal rate they share log2 rates [2/3, 2]: q = 30 + 3 l against 30 + 2 l, mean l = 4/3
    assert bd_quality(anchor, test) == pytest.approx(4 / 3, abs=1e-9)
    with pytest.raises(BDError, match="at least 2"):
        bd_rate(PSNR_CURVE, PSNR_CURVE[:1])
    with pytest.raises(BDError, match="share no metric range"):
        bd_rate(PSNR_CURVE, [(0.1, 40.0), (0.2, 41.0)])
    with pytest.raises(BDError, match="does not rise or fall strictly"):
        bd_rate(PSNR_CURVE, [(0.1, 25.0), (0.2, 25.0)])
    with pytest.raises(BDError, match="does not rise or fall strictly"):  # a noisy FID curve
        bd_rate([(0.05, 20.0), (0.1, 12.0), (0.2, 14.0), (0.4, 6.0)], LPIPS_CURVE)


def test_evaluate_reports_bd_rates_against_the_anchor(tmp_path, capsys):
    """Two operating points per method; "half" decodes to the same images with half the bytes."""
    images = small_photos((256, 192))
    truth = tmp_path / "truth"
    truth.mkdir()
    arguments = ["--ground_truth_path", str(truth), "--output_dir", str(tmp_path / "out"), "--metrics", "psnr",
                 "ms_ssim", "--device", "cpu", "--anchor", "full"]
    for quality in (20, 60):
        decoded, full, half = (tmp_path / f"{name}-{quality}" for name in ("decoded", "full", "half"))
        for folder in (decoded, full, half):
            folder.mkdir()
        for stem, image in images.items():
            Image.fromarray(image).save(truth / f"{stem}.png")
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
            data = buffer.getvalue()[: len(buffer.getvalue()) // 2 * 2]  # an even size, so half is exact
            (full / f"{stem}.bin").write_bytes(data)
            (half / f"{stem}.bin").write_bytes(data[: len(data) // 2])
            Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").save(decoded / f"{stem}.png")
        arguments += ["--method", f"full={decoded},{full}", "--method", f"half={decoded},{half}"]
    assert evaluate.main(arguments) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["bd_anchor"] == "full"
    for metric in ("psnr", "ms_ssim"):
        assert summary["bd"][metric]["full"]["bd_rate"] == pytest.approx(0.0, abs=1e-9)
        assert summary["bd"][metric]["half"]["bd_rate"] == pytest.approx(-50.0, abs=1e-6)
    assert "BD-rate against full" in capsys.readouterr().out
    # at equal rate the two curves may not overlap (JPEG at q60 is under twice q20): said, not guessed
    half = summary["bd"]["psnr"]["half"]
    assert (half["bd_quality"] is None) == ("bd_quality_why" in half)
    assert half["bd_quality"] is None or np.isfinite(half["bd_quality"])
