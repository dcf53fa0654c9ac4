import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from models.imageio import (ImageReadError, atomic_save_image, atomic_write_json, check_output_not_inside_input,
                            read_rgb, walk_files)
from tests.badfiles import BAD, GOOD, MAX_PIXELS, make_mixed_folder


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return make_mixed_folder(tmp_path_factory.mktemp("in") / "mixed")


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_files_become_upright_rgb(mixed, name):
    image = read_rgb(mixed / name, max_pixels=MAX_PIXELS)
    assert image.mode == "RGB"
    assert image.size == GOOD[name]


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_raise_one_error_naming_file_and_reason(mixed, name):
    with pytest.raises(ImageReadError) as caught:
        read_rgb(mixed / name, max_pixels=MAX_PIXELS)
    assert caught.value.path.endswith(name)
    assert BAD[name] in caught.value.reason
    assert name in str(caught.value)


def test_sixteen_bit_gray_is_scaled_not_clipped(mixed):
    original = np.asarray(Image.open(mixed / "gray16.png")).astype(np.int64)
    converted = np.asarray(read_rgb(mixed / "gray16.png"))[..., 0].astype(np.int64)
    assert np.abs(converted - (original + 128) // 257).max() == 0
    assert converted.max() > 200 and converted.min() < 50  # full range, not saturated at 255


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((10, 30, 3), dtype=np.uint8)
    pixels[:, :5] = 255  # a white band on the left of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # viewer must rotate 90 degrees clockwise: the band ends on top
    Image.fromarray(pixels).save(tmp_path / "r.png", exif=exif)
    upright = np.asarray(read_rgb(tmp_path / "r.png"))
    assert upright.shape == (30, 10, 3)
    assert upright[:5].mean() > 200 and upright[10:].mean() < 50


def test_alpha_is_composited_on_white(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert read_rgb(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)


def test_reading_never_modifies_inputs(mixed):
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in mixed.rglob("*") if p.is_file()}
    for path in digests:
        try:
            read_rgb(path, max_pixels=MAX_PIXELS)
        except ImageReadError:
            pass
    assert digests == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in digests}


def test_walk_is_recursive_sorted_and_skips_hidden(tmp_path):
    for rel in ("b.jpg", "a/c.png", ".hidden.jpg", ".git/x.jpg", "a/b/d.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    # Files of a folder first (sorted), then its subfolders (sorted), depth first.
    assert [f.relpath for f in walk_files(tmp_path)] == ["b.jpg", "a/c.png", "a/b/d.png"]


def test_output_inside_input_is_refused(tmp_path):
    for output in (tmp_path, tmp_path / "out", tmp_path / "a" / "b"):
        with pytest.raises(ValueError, match="inside --input_dir"):
            check_output_not_inside_input(tmp_path, output)
    check_output_not_inside_input(tmp_path / "in", tmp_path / "out")


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "x" / "a.json", {"k": "é"})
    atomic_save_image(Image.new("RGB", (3, 3)), tmp_path / "x" / "b.png")
    assert sorted(os.listdir(tmp_path / "x")) == ["a.json", "b.png"]
    assert oct(os.stat(tmp_path / "x" / "b.png").st_mode & 0o777) != oct(0o600)
    with pytest.raises(ZeroDivisionError):
        from models.imageio import atomic_path
        with atomic_path(tmp_path / "x" / "c.bin") as temporary:
            temporary.write_bytes(b"half")
            raise ZeroDivisionError
    assert sorted(os.listdir(tmp_path / "x")) == ["a.json", "b.png"]
