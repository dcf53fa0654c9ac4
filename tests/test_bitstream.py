"""The .sem format: exact round trips, the rates the issues ask for, label sets, the grid rules."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from models.bitstream import (caption_coder, decode_caption, decode_code, encode_caption, encode_code, inspect_code,
                              read_code_file, read_sem, write_sem)
from models.bitstream import grid as compact_grid
from models.bitstream.grid import downsample_label_map, grid_shape, upsample_label_map
from models.bitstream.sem_file import SET_IDS
from models.layout import write_label_set
from models.palettes import ADE20K, LABEL_SETS, VOID_LABEL
from models.semantic_code import SemanticCode
from tests.conftest import DATA, VOC_MASKS

CAPTIONS = (DATA / "captions.txt").read_text(encoding="utf-8").splitlines()
GOLDEN = DATA / "bitstream"
ADE_MAPS = DATA / "ade-samples" / "annotations"  # ADEChallengeData2016 annotations: 0 other, 1..150 classes
ADE_GOLDEN_MAP = "ADE_train_00000970"


@pytest.fixture(scope="module")
def masks() -> dict[str, np.ndarray]:
    return {p.stem: np.array(Image.open(p)) for p in sorted(VOC_MASKS.glob("*.png"))}


@pytest.fixture(scope="module")
def ade_maps() -> dict[str, np.ndarray]:
    return {p.stem: np.array(Image.open(p)) for p in sorted(ADE_MAPS.glob("*.png"))}


def test_lossless_round_trip_is_exact_and_below_the_target_rate(masks):
    rates = []
    for label_map in masks.values():
        data = encode_code(SemanticCode(label_map, ""))
        assert np.array_equal(decode_code(data).label_map, label_map)
        rates.append(inspect_code(data).bits_per_pixel)
    assert len(rates) == 14
    assert np.mean(rates) <= 0.035  # whole files, header and CRC included


def test_compact_mode_on_a_64_cell_grid(masks):
    map_bytes, agreement = [], []
    for label_map in masks.values():
        data = encode_code(SemanticCode(label_map, ""), grid=64)
        info = inspect_code(data)
        assert info.mode == "compact" and max(info.grid_width, info.grid_height) == 64
        decoded = decode_code(data).label_map
        assert decoded.shape == label_map.shape
        valid = label_map != VOID_LABEL
        agreement.append(np.mean(decoded[valid] == label_map[valid]))
        map_bytes.append(info.map_bytes)
    assert np.mean(map_bytes) <= 120
    assert np.mean(agreement) >= 0.96


def test_captions_are_small_and_exact():
    assert len(CAPTIONS) == 20
    sizes = []
    for caption in CAPTIONS:
        coder, payload = encode_caption(caption)
        assert coder == caption_coder.CAPTION_WORDS
        assert decode_caption(coder, payload) == caption
        sizes.append(len(payload))
    assert np.median(sizes) <= 24
    assert np.median(sizes) < np.median([len(c.encode()) for c in CAPTIONS]) / 2


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_any_unicode_caption_round_trips(caption):
    coder, payload = encode_caption(caption)
    assert decode_caption(coder, payload) == caption
    assert len(payload) <= len(caption.encode("utf-8"))  # never worse than UTF-8
    words = caption_coder.encode_caption_words(caption)  # the escape path, even when it is larger
    assert caption_coder.decode_caption_words(words) == caption


def test_word_model_is_the_one_the_format_names():
    assert caption_coder.vocabulary_fingerprint() == caption_coder.WORD_MODEL_FINGERPRINT
    assert caption_coder.word_model_available()


@pytest.mark.parametrize("seed", [None, 0, 1234, 2**64 - 1])
def test_caption_and_seed_travel_with_the_map(masks, seed):
    code = SemanticCode(masks["2007_000032"], "Arafed man, riding a horse 🐎 on the beach.", seed)
    back = decode_code(encode_code(code))
    assert back.caption == code.caption and back.seed == seed
    assert np.array_equal(back.label_map, code.label_map)


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (29, 1), (2, 3), (17, 300)])
def test_small_and_thin_maps(shape):
    rng = np.random.default_rng(sum(shape))
    label_map = rng.choice(np.array([0, 3, 15, 255], np.uint8), size=shape)
    for grid in (None, 1, 4):
        back = decode_code(encode_code(SemanticCode(label_map, "x"), grid=grid)).label_map
        assert back.shape == shape
        if grid is None:
            assert np.array_equal(back, label_map)


def test_any_uint8_labels_use_the_generic_label_set():
    label_map = np.random.default_rng(0).integers(0, 256, size=(40, 50), dtype=np.uint8)
    data = encode_code(SemanticCode(label_map, "", label_set="uint8"))
    assert inspect_code(data).label_set == "uint8" and inspect_code(data).version == 1
    assert np.array_equal(decode_code(data).label_map, label_map)
    assert decode_code(data).label_set == "uint8"
    with pytest.raises(ValueError, match="outside 0..20 .* of the voc label set"):
        encode_code(SemanticCode(label_map, ""))  # the default set is VOC: the values must be VOC ids


def test_a_single_label_map_has_no_map_data():
    data = encode_code(SemanticCode(np.full((375, 500), 7, np.uint8), ""))
    assert inspect_code(data).map_bytes == 0 and len(data) <= 16
    assert np.all(decode_code(data).label_map == 7)


def test_upsampling_is_a_bilinear_vote_with_the_documented_tie_break():
    grid_map = np.array([[1, 2]], dtype=np.uint8)
    # Pixel centres at 1/8, 3/8, 5/8, 7/8 of the width: the two middle ones are weighted 3:1.
    assert upsample_label_map(grid_map, 4, 1).tolist() == [[1, 1, 2, 2]]
    # Three pixels: the middle one lies exactly between the cells; the left cell wins the tie.
    assert upsample_label_map(grid_map, 3, 1).tolist() == [[1, 1, 2]]
    # Pixel (3, 4) of 8x8 lies in the cell of the 2, but the three 1s around it outvote it.
    corner = upsample_label_map(np.array([[1, 2], [1, 1]], dtype=np.uint8), 8, 8)
    assert corner[3, 4] == 1 and corner[0, 7] == 2 and corner[2, 6] == 2
    label_map = np.random.default_rng(1).integers(0, 5, size=(7, 9), dtype=np.uint8)
    assert np.array_equal(upsample_label_map(label_map, 9, 7), label_map)  # same size: identity


@pytest.mark.parametrize("width, height, grid, expected", [
    (500, 375, 64, (64, 48)), (375, 500, 64, (48, 64)), (500, 1, 64, (64, 1)),
    (10, 8, 64, (10, 8)), (1000, 10, 32, (32, 1)),
])
def test_grid_shape(width, height, grid, expected):
    assert grid_shape(width, height, grid) == expected


def test_golden_files_pin_format_version_1(masks):
    """Changing these bytes changes the format: bump VERSION and document it instead."""
    label_map = masks["2007_000032"]
    code = SemanticCode(label_map, "a man riding a horse on a beach", seed=42)
    for name, grid in (("lossless", None), ("compact64", 64)):
        golden = (GOLDEN / f"2007_000032-{name}.sem").read_bytes()
        assert encode_code(code, grid=grid) == golden
        decoded = decode_code(golden)
        assert decoded.caption == code.caption and decoded.seed == 42
    assert np.array_equal(decode_code((GOLDEN / "2007_000032-lossless.sem").read_bytes()).label_map,
                          label_map)


def test_write_and_read_sem_files(tmp_path, masks):
    code = SemanticCode(masks["2007_000039"], "a television on a table", seed=3)
    path = tmp_path / "deep" / "image.sem"
    size = write_sem(path, code)
    assert path.stat().st_size == size
    assert [p.name for p in path.parent.iterdir()] == ["image.sem"]  # no temporary leftovers
    back = read_sem(path)
    assert np.array_equal(back.label_map, code.label_map) and back.caption == code.caption


def test_upsampling_in_strips_equals_one_pass(monkeypatch):
    grid = np.random.default_rng(0).integers(0, 5, (12, 17)).astype(np.uint8)
    whole = compact_grid.upsample_label_map(grid, 203, 141)
    monkeypatch.setattr(compact_grid, "UPSAMPLE_STRIP_PIXELS", 450)  # strips of 2 rows
    np.testing.assert_array_equal(compact_grid.upsample_label_map(grid, 203, 141), whole)


def test_every_built_in_label_set_has_an_id():
    assert set(SET_IDS) == set(LABEL_SETS)


def test_ade20k_maps_meet_the_rates_of_issue_19(ade_maps):
    """Lossless at most 0.035 bpp; grid 64 at most 120 bytes per map at 96% agreement or more."""
    rates, sizes, agreement = [], [], []
    for label_map in ade_maps.values():
        code = SemanticCode(label_map, "", label_set="ade20k")
        lossless, compact = encode_code(code), encode_code(code, grid=64)
        back = decode_code(lossless)
        assert np.array_equal(back.label_map, label_map) and back.label_set == "ade20k"
        rates.append(inspect_code(lossless).bits_per_pixel)
        sizes.append(len(compact))
        agreement.append(np.mean(decode_code(compact).label_map == label_map))  # ADE20K has no void
    assert len(rates) == 2
    assert np.mean(rates) <= 0.035 and max(sizes) <= 120 and np.mean(agreement) >= 0.96


@pytest.mark.parametrize("label_set, version", [("voc", 1), ("uint8", 1), ("ade20k", 2), ("my-labels_2.0", 2)])
def test_writers_use_the_lowest_version_that_holds_the_label_set(label_set, version):
    label_map = np.zeros((6, 9), dtype=np.uint8)
    label_map[2:5, 3:7] = 15
    for grid in (None, 4):
        data = encode_code(SemanticCode(label_map, "x", seed=1, label_set=label_set), grid=grid)
        info = inspect_code(data)
        assert data[3] == info.version == version and info.label_set == label_set
        back = decode_code(data)
        assert back.label_set == label_set and back.caption == "x" and back.seed == 1


def test_a_named_label_set_travels_after_the_label_list():
    label_map = np.array([[0, 7, 200], [200, 7, 0]], dtype=np.uint8)
    data = encode_code(SemanticCode(label_map, "", label_set="Cityscapes-19"))
    # magic, version 2, flags (set id 3), width 3, height 2, 3 labels, the name with its length
    assert data.startswith(b"SEM\x02\x30\x03\x02\x02\x00\x07\xc8\x0dCityscapes-19")
    back = decode_code(data)
    assert back.label_set == "Cityscapes-19" and np.array_equal(back.label_map, label_map)


@pytest.mark.parametrize("name", ["", "bad name", "-lead", "x" * 65, "ünï", "voc2\n"])
def test_bad_label_set_names_are_refused(name):
    with pytest.raises(ValueError, match="label set name"):
        encode_code(SemanticCode(np.zeros((2, 2), np.uint8), "", label_set=name))


def test_label_map_values_the_set_does_not_allow_are_named(ade_maps):
    with pytest.raises(ValueError, match="class ids 61 outside 0..20"):
        encode_code(SemanticCode(ade_maps["ADE_train_00000970"], ""))  # 61 (river) is no VOC id
    voc = np.array([[0, 15, 255]], dtype=np.uint8)
    with pytest.raises(ValueError, match="class ids 255 outside 0..150 of the ade20k label set"):
        encode_code(SemanticCode(voc, "", label_set="ade20k"))


def test_compact_mode_ignores_only_the_sets_void():
    label_map = np.full((4, 4), 255, dtype=np.uint8)
    label_map[0, 0] = 3  # one pixel of class 3 in a cell of void
    voc = decode_code(encode_code(SemanticCode(label_map, ""), grid=1)).label_map
    uint8 = decode_code(encode_code(SemanticCode(label_map, "", label_set="uint8"), grid=1)).label_map
    assert np.all(voc == 3) and np.all(uint8 == 255)


def test_golden_files_pin_format_version_2(ade_maps):
    """An ADE20K code: version 2, label set id 2. Changing these bytes changes the format."""
    label_map = ade_maps[ADE_GOLDEN_MAP]
    code = SemanticCode(label_map, "a house by a river, trees and grass", seed=7, label_set="ade20k")
    for name, grid in (("lossless", None), ("compact64", 64)):
        golden = (GOLDEN / f"{ADE_GOLDEN_MAP}-{name}.sem").read_bytes()
        assert golden[3] == 2 and golden[4] >> 4 == 2
        assert encode_code(code, grid=grid) == golden
        decoded = decode_code(golden)
        assert (decoded.caption, decoded.seed, decoded.label_set) == (code.caption, 7, "ade20k")
        assert inspect_code(golden).label_set == "ade20k"
    lossless = decode_code((GOLDEN / f"{ADE_GOLDEN_MAP}-lossless.sem").read_bytes())
    assert np.array_equal(lossless.label_map, label_map)


def test_a_label_map_png_is_read_with_its_folders_label_set(tmp_path):
    label_map = np.array([[0, 61], [150, 2]], dtype=np.uint8)
    Image.fromarray(label_map, mode="L").save(tmp_path / "map.png")
    assert read_code_file(tmp_path / "map.png").label_set == "voc"  # no label_set.json: VOC
    write_label_set(tmp_path, ADE20K)
    code = read_code_file(tmp_path / "map.png")
    assert code.label_set == "ade20k" and np.array_equal(code.label_map, label_map) and code.caption == ""


def majority_per_cell(label_map: np.ndarray, grid_width: int, grid_height: int, void_label: int | None) -> np.ndarray:
    """The encoder's vote written out cell by cell (docs/bitstream.md, "Compact mode")."""
    height, width = label_map.shape
    cell_rows, cell_cols = np.arange(height) * grid_height // height, np.arange(width) * grid_width // width
    grid_map = np.zeros((grid_height, grid_width), dtype=np.uint8)
    for row in range(grid_height):
        for column in range(grid_width):
            cell = label_map[cell_rows == row][:, cell_cols == column].ravel()
            counts = np.bincount(cell[cell != void_label] if void_label is not None else cell, minlength=256)
            grid_map[row, column] = np.argmax(counts) if counts.any() else void_label
    return grid_map


@pytest.mark.parametrize("strip_entries", [1, 50, 1 << 18])
def test_the_encoders_vote_is_a_majority_per_cell_whatever_the_strips(monkeypatch, strip_entries):
    monkeypatch.setattr(compact_grid, "DOWNSAMPLE_STRIP_ENTRIES", strip_entries)
    rng = np.random.default_rng(strip_entries)
    for height, width, grid in ((37, 53, 9), (5, 80, 7), (64, 3, 64), (20, 20, 1)):
        label_map = rng.choice(np.array([0, 4, 15, 255], np.uint8), size=(height, width), p=[0.3, 0.2, 0.2, 0.3])
        label_map[:4, :4] = 255  # an all-void cell at grid 9
        for void_label in (None, 255):
            grid_size = grid_shape(width, height, grid)
            np.testing.assert_array_equal(downsample_label_map(label_map, *grid_size, void_label),
                                          majority_per_cell(label_map, *grid_size, void_label))


def test_void_wins_a_cell_only_when_the_whole_cell_is_void():
    """Even in a cell of more than a million pixels (the vote once weighted void by 1e-6 per pixel)."""
    label_map = np.full((1100, 1000), VOID_LABEL, dtype=np.uint8)
    label_map[500, 500] = 3
    assert np.all(decode_code(encode_code(SemanticCode(label_map, ""), grid=1)).label_map == 3)


ENCODE_UNDER_A_MEMORY_CAP = """
import resource, tracemalloc
import numpy as np
from models.bitstream import encode_code
from models.bitstream.grid import downsample_label_map, grid_shape
from models.semantic_code import SemanticCode

label_map = np.zeros((3000, 4000), dtype=np.uint8)  # 12 MB: two regions and a band of void
label_map[:, 1500:] = 15
label_map[1000:1010] = 255
encode_code(SemanticCode(label_map[990:1020, :40], ""))  # load the compiled coder before measuring
address_space = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (address_space + 2**30,) * 2)
tracemalloc.start()
encode_code(SemanticCode(label_map, ""), grid=4000)
downsample_label_map(label_map, *grid_shape(4000, 3000, 3999), 255)  # the vote, on 4 pixels per 3 cells
print(tracemalloc.get_traced_memory()[1])
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc and caps the address space")
def test_compact_encoding_memory_is_bounded_by_the_map_not_the_grid():
    """A 4000x3000 map at grid 4000 and 3999: a few bytes per pixel, not 256 counts per cell (23 GB)."""
    result = subprocess.run([sys.executable, "-c", ENCODE_UNDER_A_MEMORY_CAP], capture_output=True, text=True,
                            check=False, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert result.returncode == 0, result.stderr[-1500:]
    assert int(result.stdout.split()[-1]) <= 4 * 3000 * 4000 + 16 * 2**20  # bytes
