"""The browser demo's service (models.app.service) on the shipped shapes system, without a browser."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from models.app.__main__ import display_names, example_images
from models.app.service import MAX_UPLOAD_PIXELS, AppError, DemoService, Settings
from models.bitstream import decode_code
from models.config import load_config
from models.palettes import VOC
from models.quickstart.model_folder import SHAPES_CONFIG
from models.quickstart.shapes import held_out_samples
from tests.threads import one_cpu_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def service(one_cpu_thread, tmp_path_factory):  # noqa: F811
    return DemoService(load_config(SHAPES_CONFIG), tmp_path_factory.mktemp("app"), display_names(str(SHAPES_CONFIG)))


@pytest.fixture(scope="module")
def photo():
    return np.asarray(held_out_samples(8)[7].image)  # not one of the page's four examples


def test_a_photo_round_trips_through_a_sem_file_of_the_size_shown(service, photo):
    encoded = service.encode(photo, Settings())
    data = encoded.sem_path.read_bytes()
    assert encoded.num_bytes == len(data) and encoded.size_text().startswith(f"{len(data)} bytes")
    assert encoded.sem_path.parent.parent == service.temp_dir  # downloads live in the temporary folder
    code = decode_code(data)
    assert np.array_equal(code.label_map, encoded.code.label_map) and code.caption == encoded.code.caption
    picture = service.decode(encoded, Settings())
    assert picture.shape == photo.shape and picture.dtype == np.uint8
    scores = service.scores(photo, picture, encoded.code.label_map)
    assert scores.miou > 0.6  # the decoder draws the transmitted map (quality test: 0.84 over 32 images)
    assert scores.psnr > 10 and 0 < scores.ssim <= 1


def test_the_codecs_get_the_same_byte_budget_and_are_scored_against_the_same_map(service, photo):
    encoded = service.encode(photo, Settings())
    results = service.codecs(photo, encoded.num_bytes)
    assert [r.name for r in results] == ["jpeg", "webp", "avif"]
    for result in results:
        assert result.image.shape == photo.shape
        assert result.fits == (result.num_bytes <= encoded.num_bytes)
        assert ("does not fit" in result.caption()) != result.fits


def test_an_edited_caption_makes_a_new_file_with_that_caption(service, photo):
    encoded = service.encode(photo, Settings())
    edited = service.recode(replace(encoded.code, caption="a big red circle on a grey background"), None)
    assert decode_code(edited.sem_path.read_bytes()).caption == "a big red circle on a grey background"
    assert edited.sem_path != encoded.sem_path and encoded.sem_path.is_file()


def test_a_coarser_grid_makes_a_smaller_file(service, photo):
    lossless, coarse = service.encode(photo, Settings()), service.encode(photo, Settings(grid=8))
    assert coarse.num_bytes < lossless.num_bytes and coarse.grid == 8
    with pytest.raises(AppError, match="grid must have 1 to 64 cells"):
        service.encode(photo, Settings(grid=65))


def test_the_legend_names_the_classes_present_in_their_colours(service, photo):
    code = service.encode(photo, Settings()).code
    legend = service.legend(code)
    present = {int(v) for v in np.unique(code.label_map)}
    for value, name in {0: "background", 1: "circle", 2: "square", 3: "triangle", 4: "diamond"}.items():
        assert (f"</span>{name}</span>" in legend) == (value in present), name
    assert service.label_map_image(code).shape[0] >= 256  # enlarged for the page


@pytest.mark.parametrize("content, reason", [
    (b"this is not an image\n", "not an image"),
    (b"", "empty file"),
    ("truncated", "corrupt or truncated"),
])
def test_bad_photo_uploads_get_a_message_naming_the_file(service, tmp_path, content, reason):
    path = tmp_path / "upload.png"
    if content == "truncated":
        Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
        content = path.read_bytes()[:60]
    path.write_bytes(content)
    with pytest.raises(AppError, match=f"upload.png: {reason}"):
        service.read_photo(path)


def test_a_photo_with_too_many_pixels_is_refused_before_it_is_decoded(service, tmp_path):
    path = tmp_path / "huge.png"
    side = int(MAX_UPLOAD_PIXELS ** 0.5) + 1
    Image.new("L", (side, side)).save(path)  # a few kilobytes: one grey value
    limit = f"huge.png: {side}x{side} = .* exceeds the limit of {MAX_UPLOAD_PIXELS} on this page"
    with pytest.raises(AppError, match=limit):
        service.read_photo(path)


def test_corrupt_or_foreign_sem_uploads_are_refused(service, photo, tmp_path):
    data = service.encode(photo, Settings()).sem_path.read_bytes()
    for name, content in (("flipped.sem", data[:-5] + bytes([data[-5] ^ 1]) + data[-4:]),
                          ("short.sem", data[:10]), ("photo.sem", b"\x89PNG\r\n\x1a\n" + bytes(64))):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AppError, match=f"{name}: not a valid .sem file"):
            service.read_sem(tmp_path / name)
    (tmp_path / "good.sem").write_bytes(data)
    assert service.read_sem(tmp_path / "good.sem").num_bytes == len(data)


def test_the_examples_are_held_out_shapes_images_or_photographs():
    shapes = example_images(str(SHAPES_CONFIG))
    assert len(shapes) == 4 and all(image.shape == (64, 64, 3) for image in shapes)
    assert all(image.shape[0] > 256 for image in example_images("configs/config.yaml"))


def test_decoding_reports_each_sampler_step_for_the_progress_display(service, photo):
    steps = []
    service.decode(service.encode(photo, Settings()), Settings(steps=5), steps.append)
    assert steps == [1, 2, 3, 4, 5] and service.decoder.on_step is None


def test_the_page_serves_any_configured_system_here_the_tiny_models_in_the_real_formats(tiny_config, tmp_path):
    service = DemoService(load_config(tiny_config), tmp_path)  # as configs/config.yaml, with tiny weights
    photo = example_images(str(tiny_config))[1][::8, ::8]  # scikit-image's cat, 38x56
    encoded = service.encode(photo, Settings(steps=2))
    assert encoded.code.label_set == "voc" and len(encoded.sem_path.read_bytes()) == encoded.num_bytes
    assert service.decode(encoded, Settings(steps=2)).shape == photo.shape
    legend = service.legend(encoded.code)  # VOC's names: no shapes names outside the shapes system
    assert all(f"</span>{VOC.class_names[value]}</span>" in legend for value in np.unique(encoded.code.label_map))
