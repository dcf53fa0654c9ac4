"""Classic codecs at a byte budget: the bisection's promise on real photos, and compress_images.py."""

import csv
import hashlib

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

import compress_images
from models.baselines.codecs import (CODECS, LOW_END_SCAN, Codec, compress_to_size, decode, encode,
                                     highest_fitting, scale_ladder)
from models.imageio import read_rgb
from models.rate import bits_per_pixel
from tests.conftest import VOC_IMAGES

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photos():
    """The four scikit-image photos and three VOC photos, as RGB images."""
    images = {name: Image.fromarray(getattr(skimage_data, name)()) for name in SKIMAGE_PHOTOS}
    for path in sorted(VOC_IMAGES.glob("*.jpg"))[:3]:
        images[path.stem] = read_rgb(path)
    return images


def check_tight_fit(image, result, codec=None):
    """The file fits, one quality step higher does not, and (if shrunk) no low-end quality fits one scale up."""
    codec = codec or CODECS[result.codec]
    assert result.fits and result.num_bytes <= result.max_bytes
    assert result.data == encode(codec, image, result.quality, result.scale)
    if result.quality < codec.max_quality:
        assert len(encode(codec, image, result.quality + 1, result.scale)) > result.max_bytes
    if result.scale < 1.0:
        ladder = scale_ladder(*image.size)
        larger = ladder[ladder.index(result.scale) - 1]
        for quality in range(codec.min_quality, codec.min_quality + LOW_END_SCAN + 1):
            assert len(encode(codec, image, quality, larger)) > result.max_bytes


@pytest.mark.parametrize("codec", ["jpeg", "webp", "png"])
def test_highest_quality_within_budget_on_real_photos(codec):
    images = photos()
    if codec == "png":  # quantising is slow: two of the photos
        images = {name: images[name] for name in ("chelsea", sorted(images)[0])}
    for name, image in images.items():
        budget = round(0.3 * image.width * image.height / 8)  # 0.3 bpp: inside every scale here
        result = compress_to_size(image, codec, budget)
        check_tight_fit(image, result)


@pytest.mark.parametrize("codec", ["avif", "jxl"])
def test_highest_quality_within_budget_avif_and_jxl(codec):
    images = photos()
    for name in ("coffee", sorted(images)[0]):
        image = images[name]
        result = compress_to_size(image, codec, round(0.4 * image.width * image.height / 8))
        check_tight_fit(image, result)


def test_downscaling_finds_the_largest_scale_that_fits():
    image = Image.fromarray(skimage_data.astronaut())
    budget = 1500  # below what JPEG's lowest quality needs at 512x512
    assert len(encode(CODECS["jpeg"], image, 1)) > budget
    unscaled = compress_to_size(image, "jpeg", budget)
    assert not unscaled.fits and unscaled.scale == 1.0 and unscaled.quality == 1
    for codec in ("jpeg", "png"):
        result = compress_to_size(image, codec, budget, allow_downscale=True)
        assert result.scale < 1.0
        check_tight_fit(image, result)
        assert decode(result.data, image.size).size == image.size


def check_promise(sizes, answer, budget):
    """``answer`` fits and the next step does not (or it is the top); None only if no low-end size fits."""
    if answer is None:
        assert all(size > budget for size in sizes[:LOW_END_SCAN + 1])
        return
    assert sizes[answer] <= budget
    assert answer == len(sizes) - 1 or sizes[answer + 1] > budget


def test_bisection_answer_fits_and_the_next_step_does_not_even_if_sizes_are_not_monotone():
    sizes = [10, 20, 30, 25, 50, 45, 70, 80]  # size of quality q, not monotone
    for budget in range(5, 90):
        answer = highest_fitting(lambda q: sizes[q], 0, len(sizes) - 1, budget)
        check_promise(sizes, answer, budget)
        assert (answer is None) == (budget < sizes[0])


def test_bisection_starts_above_an_over_budget_lowest_quality():
    sizes = [50, 48, 49, 45, 60, 55, 70, 80, 90, 100]  # dips at 1 and 3, as JPEG's quality 2, AVIF's 3
    for budget in range(40, 110):
        answer = highest_fitting(lambda q: sizes[q], 0, len(sizes) - 1, budget)
        check_promise(sizes, answer, budget)
        assert (answer is None) == (budget < min(sizes[:LOW_END_SCAN + 1]))
    for budget, best in ((44, None), (45, 3), (48, 3), (49, 3), (50, 3)):  # fits at 3, not at 4
        assert highest_fitting(lambda q: sizes[q], 0, len(sizes) - 1, budget) == best


def test_bisection_is_logarithmic_when_sizes_grow():
    probed = []

    def size_of(quality):
        probed.append(quality)
        return 1000 + 10 * quality

    for budget in range(1000, 2100, 7):
        probed.clear()
        answer = highest_fitting(size_of, 0, 100, budget)
        assert answer == min(100, (budget - 1000) // 10)
        assert len(probed) <= 2 + 7  # both ends, then at most ceil(log2(100)) halvings
    probed.clear()
    assert highest_fitting(size_of, 0, 100, 999) is None
    assert probed == list(range(LOW_END_SCAN + 1))  # gives up after the low end


@pytest.mark.parametrize("codec, stem, budget, quality, num_bytes", [
    ("jpeg", "2007_000063", 2849, 2, 2849),  # quality 1: 2850 bytes, 2: 2849, 3: 3161
    ("avif", "2009_000457", 4500, 5, 4423),  # qualities 0-2: 4560 bytes, 3-5: 4423, 6: 5084
])
def test_a_quality_above_an_over_budget_lowest_one_is_found(codec, stem, budget, quality, num_bytes):
    image = read_rgb(VOC_IMAGES / f"{stem}.jpg")
    assert len(encode(CODECS[codec], image, CODECS[codec].min_quality)) > budget
    for allow_downscale in (False, True):
        result = compress_to_size(image, codec, budget, allow_downscale=allow_downscale)
        assert (result.quality, result.scale, result.num_bytes) == (quality, 1.0, num_bytes)
        check_tight_fit(image, result)


def _save_with_a_dip(image, quality, buffer):
    """A stand-in codec: one byte per 16 pixels, times a factor that dips at quality 1."""
    factor = (1.0, 0.9, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6)[quality]
    buffer.write(bytes(round(image.width * image.height / 16 * factor)))


def test_downscaling_keeps_the_largest_scale_where_a_quality_above_the_lowest_fits():
    codec = Codec("dip", ".bin", 0, 7, _save_with_a_dip)
    image = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    # 64x64: 256 bytes at quality 0 and 230 at 1; 59x59 (scale 2^(-1/8)): 218 and 196; 54x54: 182.
    assert compress_to_size(image, codec, 240) == compress_to_size(image, codec, 240, allow_downscale=True)
    assert compress_to_size(image, codec, 240).quality == 1
    result = compress_to_size(image, codec, 200, allow_downscale=True)
    assert (result.quality, result.scale, result.num_bytes) == (1, 2 ** (-1 / 8), 196)
    check_tight_fit(image, result, codec)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def photo_folder(tmp_path):
    """Three VOC photos (one in a sub-folder), a broken file and a text file."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    names = sorted(VOC_IMAGES.glob("*.jpg"))[:3]
    for path, target in zip(names, ("a.jpg", "b.jpg", "sub/c.jpg")):
        (folder / target).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


def digests(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_compress_images_writes_files_results_and_resumes(photo_folder, tmp_path, capsys):
    output = tmp_path / "out"
    before = digests(photo_folder)
    args = ["--input-dir", str(photo_folder), "--output-dir", str(output), "--target-size", "3",
            "--codecs", "jpeg", "webp", "--allow-downscale"]
    assert compress_images.main(args) == 1  # the broken file
    captured = capsys.readouterr()
    assert "error: broken.png" in captured.err and "notes.txt" in captured.err
    assert digests(photo_folder) == before
    rows = read_csv(output / "results.csv")
    assert list(rows[0]) == ["image", "codec", "quality", "bytes", "bpp", "scale", "fits"]
    assert {(r["image"], r["codec"]) for r in rows} == {
        (image, codec) for image in ("a.jpg", "b.jpg", "sub/c.jpg") for codec in ("jpeg", "webp")}
    for row in rows:
        source = Image.open(photo_folder / row["image"])
        stem = row["image"].rsplit(".", 1)[0]
        compressed = output / row["codec"] / (stem + CODECS[row["codec"]].extension)
        assert compressed.stat().st_size == int(row["bytes"]) <= 3 * 1024
        assert row["fits"] == "true"
        assert float(row["bpp"]) == pytest.approx(bits_per_pixel(int(row["bytes"]), *source.size), abs=1e-6)
        assert Image.open(output / f"{row['codec']}_decoded" / f"{stem}.png").size == source.size
    def mtimes():
        return {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file() and p.name != "results.csv"}

    before_rerun = mtimes()
    assert compress_images.main(args) == 1
    assert "compressed 0, already done 6" in capsys.readouterr().out
    assert mtimes() == before_rerun
    (output / "webp" / "b.webp").unlink()
    compress_images.main(args)
    assert "compressed 1, already done 5" in capsys.readouterr().out
    changed = args[:5] + ["4"] + args[6:]
    assert compress_images.main(changed) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_images_that_cannot_fit_are_kept_and_reported(photo_folder, tmp_path, capsys):
    (photo_folder / "broken.png").unlink()
    output = tmp_path / "out"
    status = compress_images.main(["--input-dir", str(photo_folder), "--output-dir", str(output),
                                   "--target-size", "0.2", "--codecs", "jpeg"])
    assert status == 0
    rows = read_csv(output / "results.csv")
    assert len(rows) == 3 and all(row["fits"] == "false" and int(row["bytes"]) > 204 for row in rows)
    assert all((output / "jpeg_decoded" / (r["image"].rsplit(".", 1)[0] + ".png")).exists() for r in rows)
    captured = capsys.readouterr()
    assert captured.err.count("over budget:") == 3 and "over budget 3" in captured.out


def test_budgets_from_bpp_and_from_matching_files(photo_folder, tmp_path):
    (photo_folder / "broken.png").unlink()
    sizes = {"a": 2500, "b": 3100, "sub/c": 2800}
    semantic = tmp_path / "semantic"
    for stem, size in sizes.items():
        (semantic / stem).parent.mkdir(parents=True, exist_ok=True)
        (semantic / f"{stem}.sem").write_bytes(bytes(size))
    (semantic / "a.png").write_bytes(bytes(10))  # a label-map PNG next to its .sem, as process_input writes
    matched = tmp_path / "matched"
    # Only a.png counts when asked for: b and c have no budget and are reported.
    assert compress_images.main(["--input-dir", str(photo_folder), "--output-dir", str(tmp_path / "png"),
                                 "--match-sizes-from", str(semantic), "--match-suffix", ".png",
                                 "--codecs", "jpeg"]) == 1
    # By default the .sem files are the rate.
    assert compress_images.main(["--input-dir", str(photo_folder), "--output-dir", str(matched),
                                 "--match-sizes-from", str(semantic),
                                 "--codecs", "jpeg", "--allow-downscale"]) == 0
    for row in read_csv(matched / "results.csv"):
        budget = sizes[row["image"].rsplit(".", 1)[0]]
        assert int(row["bytes"]) <= budget and row["fits"] == "true"
        assert int(row["bytes"]) > 0.8 * budget  # used, not wasted
    by_bpp = tmp_path / "bpp"
    assert compress_images.main(["--input-dir", str(photo_folder), "--output-dir", str(by_bpp),
                                 "--target-bpp", "0.25", "--codecs", "webp"]) == 0
    assert all(float(row["bpp"]) <= 0.25 for row in read_csv(by_bpp / "results.csv"))


def test_flag_errors_are_one_line(photo_folder, tmp_path, capsys):
    output = str(tmp_path / "out")
    assert compress_images.main(["--input-dir", str(tmp_path / "nope"), "--output-dir", output,
                                 "--target-size", "1"]) == 2
    assert compress_images.main(["--input-dir", str(photo_folder), "--output-dir", output,
                                 "--target-size", "-1"]) == 2
    assert compress_images.main(["--input-dir", str(photo_folder), "--output-dir", str(photo_folder / "x"),
                                 "--target-size", "1"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
