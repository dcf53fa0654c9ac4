"""Rate control: the finest .sem file within a byte budget (models.bitstream.rate_control), from
Python, from `python -m models.bitstream encode` and from process_input.py.

"Finest that fits" is the baselines' promise (models/baselines/codecs.py), since file size is
not monotone in the grid: lossless when the lossless file fits; otherwise the file at the chosen
grid G fits and the file at G + 1 does not.
"""

import shutil

import numpy as np
import pytest
from PIL import Image

import process_input
from models.bitstream import OVER_BUDGET_STATUS, RateSearch, decode_code, encode_code, encode_within, read_sem
from models.bitstream.__main__ import main as bitstream_main
from models.encode.job import OutputSpec
from models.rate import budget_bytes
from models.semantic_code import SemanticCode
from tests.conftest import VOC_IMAGES, VOC_MASKS

CAPTION = "a man riding a horse"
BUDGETS = (48, 64, 96, 128)


def voc_codes() -> dict[str, SemanticCode]:
    return {path.name: SemanticCode(np.array(Image.open(path)), CAPTION) for path in sorted(VOC_MASKS.glob("*.png"))}


def test_every_voc_mask_gets_the_finest_grid_within_each_budget():
    """The issue's acceptance: 14 VOC masks with a caption, budgets 48, 64, 96 and 128 bytes."""
    codes = voc_codes()
    assert len(codes) == 14
    grids = {}
    for name, code in codes.items():
        search = RateSearch(code)
        for budget in BUDGETS:
            fitted = search.fit(budget)
            assert fitted.fits and len(fitted.data) <= budget, (name, budget)
            assert fitted.grid is not None  # these maps need 300-1000 bytes losslessly
            assert len(encode_code(code)) > budget
            assert fitted.data == encode_code(code, grid=fitted.grid)  # the file is what encode_code writes
            assert len(encode_code(code, grid=fitted.grid + 1)) > budget, (name, budget, fitted.grid)
            grids[name, budget] = fitted.grid
        decoded = decode_code(fitted.data)
        assert decoded.caption == CAPTION and decoded.label_map.shape == code.label_map.shape
    assert all(grids[name, 48] < grids[name, 128] for name in codes)  # more bytes, finer maps


def test_lossless_when_it_fits():
    code = voc_codes()["2007_000032.png"]
    lossless = len(encode_code(code))
    fitted = encode_within(code, lossless)
    assert fitted.grid is None and fitted.data == encode_code(code) and fitted.mode == "lossless"
    assert encode_within(code, lossless - 1).grid is not None


def test_a_budget_below_the_caption_and_header_keeps_the_coarsest_grid_and_says_so():
    code = SemanticCode(voc_codes()["2007_000032.png"].label_map, "a very long caption " * 4)
    smallest = len(encode_code(code, grid=1))
    fitted = encode_within(code, smallest - 5)
    assert not fitted.fits and fitted.grid == 1 and fitted.overshoot == 5
    assert fitted.data == encode_code(code, grid=1)
    assert "over the" in fitted.describe() and "by 5 bytes" in fitted.describe()
    # a one-label map: the lossless file has no grid field, so it is the smaller one
    flat = SemanticCode(np.zeros((40, 60), np.uint8), "a very long caption " * 4)
    fitted = encode_within(flat, 10)
    assert fitted.grid is None and len(fitted.data) == len(encode_code(flat, grid=1)) - 1


def test_budgets_in_bits_per_pixel_round_down_to_whole_bytes():
    assert budget_bytes(500, 281, target_bpp=0.01) == 175  # 175.625
    assert budget_bytes(80, 1, target_bpp=0.1) == 1  # 0.1 * 80 / 8 is 0.99999... in floats
    assert budget_bytes(64, 64, target_bytes=48) == 48
    assert budget_bytes(64, 64) is None
    for bad in ({"target_bytes": 0}, {"target_bytes": 2.5}, {"target_bpp": 0.0}, {"target_bpp": float("nan")},
                {"target_bytes": 10, "target_bpp": 0.1}):
        with pytest.raises(ValueError):
            budget_bytes(64, 64, **bad)
    with pytest.raises(ValueError, match="--target_bpp"):
        OutputSpec(target_bpp=-1.0)
    with pytest.raises(ValueError, match="at most one"):
        OutputSpec(grid=16, target_bytes=64)


def test_the_command_line_fits_a_budget_and_reports_an_overshoot(tmp_path, capsys):
    mask = VOC_MASKS / "2007_000032.png"
    sem = tmp_path / "a.sem"
    assert bitstream_main(["encode", str(mask), str(sem), "--caption", CAPTION, "--target_bytes", "64"]) == 0
    code = SemanticCode(np.array(Image.open(mask)), CAPTION)
    assert sem.read_bytes() == encode_within(code, 64).data and sem.stat().st_size <= 64
    assert bitstream_main(["encode", str(mask), str(sem), "--caption", CAPTION, "--target_bpp", "0.01"]) == 0
    assert sem.read_bytes() == encode_within(code, 175).data
    capsys.readouterr()
    assert bitstream_main(["encode", str(mask), str(sem), "--caption", CAPTION, "--target_bytes", "12"]) \
        == OVER_BUDGET_STATUS
    err = capsys.readouterr().err
    assert f"over budget: {sem}" in err and "kept at grid 1" in err
    assert sem.read_bytes() == encode_code(code, grid=1)  # written all the same
    with pytest.raises(SystemExit) as stop:
        bitstream_main(["encode", str(mask), str(sem), "--grid", "8", "--target_bytes", "64"])
    assert stop.value.code == 2


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos") / "in"
    folder.mkdir()
    for photo in sorted(VOC_IMAGES.glob("*.jpg"))[:3]:
        shutil.copy(photo, folder / photo.name)
    return folder


def encode(tiny_config, input_dir, output_dir, *flags):
    return process_input.main(["--config_path", str(tiny_config), "--input_dir", str(input_dir),
                               "--output_dir", str(output_dir), "--device", "cpu", "--format", "sem", *flags])


def test_process_input_writes_every_file_within_the_budget(tiny_config, photos, tmp_path, capsys):
    lossless = tmp_path / "lossless"
    assert encode(tiny_config, photos, lossless) == 0
    budget = 200
    assert encode(tiny_config, photos, tmp_path / "fitted", "--target_bytes", str(budget)) == 0
    assert "rate control: 3 file(s)" in capsys.readouterr().out
    assert sum(sem.stat().st_size > budget for sem in lossless.glob("*.sem")) >= 2  # the budget bites
    for sem in sorted((tmp_path / "fitted").glob("*.sem")):
        code = read_sem(lossless / sem.name)  # the same map and caption, coded losslessly
        assert sem.stat().st_size <= budget
        assert sem.read_bytes() == encode_within(code, budget).data
    # bits per pixel: each image's own budget
    assert encode(tiny_config, photos, tmp_path / "bpp", "--target_bpp", "0.005") == 0
    for sem in sorted((tmp_path / "bpp").glob("*.sem")):
        code = read_sem(lossless / sem.name)
        assert sem.read_bytes() == encode_within(code, budget_bytes(code.width, code.height, target_bpp=0.005)).data


def test_process_input_keeps_and_reports_files_over_budget(tiny_config, photos, tmp_path, capsys):
    output_dir = tmp_path / "tight"
    assert encode(tiny_config, photos, output_dir, "--target_bytes", "12") == OVER_BUDGET_STATUS
    captured = capsys.readouterr()
    assert captured.err.count("over budget: ") == 3 and "kept at grid 1" in captured.err
    assert "over budget: 3 file(s)" in captured.out and "encoded 3" in captured.out
    assert len(list(output_dir.glob("*.sem"))) == 3  # written all the same, at the coarsest grid
    assert all(read_sem(sem) is not None and sem.stat().st_size > 12 for sem in output_dir.glob("*.sem"))
    # a re-run skips the finished files and reports them again
    assert encode(tiny_config, photos, output_dir, "--target_bytes", "12") == OVER_BUDGET_STATUS
    captured = capsys.readouterr()
    assert "already done 3" in captured.out and captured.err.count("written by an earlier run") == 3
    assert encode(tiny_config, photos, output_dir, "--target_bytes", "4000") == 0  # done and within 4000
    with pytest.raises(SystemExit):
        encode(tiny_config, photos, output_dir, "--grid", "8", "--target_bpp", "0.01")
