"""Classic codecs at a byte budget: the bisection's promise on real photos, and compress_images.py."""

import csv
import hashlib

import pytest
from PIL import Image
from skimage import data as skimage_data

import compress_images
from models.baselines.codecs import CODECS, compress_to_size, decode, encode, highest_fitting, scale_ladder
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


def check_tight_fit(image, result):
    """The file fits, one quality step higher does not, and (if shrunk) the next larger scale does not."""
    codec = CODECS[result.codec]
    assert result.fits and result.num_bytes <= result.max_bytes
    assert result.data == encode(codec, image, result.quality, result.scale)
    if result.quality < codec.max_quality:
        assert len(encode(codec, image, result.quality + 1, result.scale)) > result.max_bytes
    if result.scale < 1.0:
        ladder = scale_ladder(*image.size)
        larger = ladder[ladder.index(result.scale) - 1]
        assert len(encode(codec, image, codec.min_quality, larger)) > result.max_bytes


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


def test_bisection_answer_fits_and_the_next_step_does_not_even_if_sizes_are_not_monotone():
    sizes = [10, 20, 30, 25, 50, 45, 70, 80]  # size of quality q, not monotone
    for budget in range(5, 90):
        answer = highest_fitting(lambda q: sizes[q], 0, len(sizes) - 1, budget)
        if budget < sizes[0]:
            assert answer is None
            continue
        assert sizes[answer] <= budget
        assert answer == len(sizes) - 1 or sizes[answer + 1] > budget


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
