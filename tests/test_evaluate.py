"""evaluate.py and the metric suite: agreement with scikit-image, pairing, offline weights, plots."""

import csv
import io
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import evaluate
from models.baselines.codecs import CODECS, encode
from models.config import load_config
from models.evaluation.job import align_to_truth
from models.evaluation.metrics import WEIGHT_FILES
from models.imageio import read_rgb
from models.layout import pair_by_stem
from models.palettes import label_map_to_pil
from models.rate import bits_per_pixel
from models.tiny.stand_in_weights import write_random_weights
from tests.conftest import VOC_IMAGES


def jpeg_copy(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def make_pairs(root, images: dict, quality: int = 25, extension: str = ".png"):
    """Ground truths as JPEG files and their JPEG-degraded predictions under ``root``."""
    truth, prediction = root / "truth", root / "prediction"
    for name, image in images.items():
        (truth / name).parent.mkdir(parents=True, exist_ok=True)
        (prediction / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(truth / f"{name}.jpg", quality=95)
        Image.fromarray(jpeg_copy(image, quality)).save(prediction / f"{name}{extension}")
    return truth, prediction


def small_photos(size=(240, 200)):
    """Three real photos, shrunk so that the network metrics stay quick."""
    paths = sorted(VOC_IMAGES.glob("*.jpg"))[:3]
    return {path.stem: np.asarray(read_rgb(path).resize(size, Image.Resampling.LANCZOS)) for path in paths}


def test_psnr_and_ssim_agree_with_scikit_image_on_real_pairs(tmp_path):
    images = {name: getattr(skimage_data, name)() for name in ("astronaut", "chelsea", "coffee")}
    voc_photo = sorted(VOC_IMAGES.glob("*.jpg"))[0]
    images["voc/" + voc_photo.stem] = np.asarray(read_rgb(voc_photo))
    truth, prediction = make_pairs(tmp_path, images)
    status = evaluate.main(["--ground_truth_path", str(truth), "--prediction_path", str(prediction),
                            "--output_dir", str(tmp_path / "out"), "--metrics", "psnr", "ssim",
                            "--device", "cpu"])
    assert status == 0
    rows = read_csv(tmp_path / "out" / "metrics.csv")
    assert list(rows[0]) == ["image", "psnr", "ssim"]
    assert len(rows) == 4
    for row in rows:
        reference = np.asarray(read_rgb(truth / row["image"]))
        predicted = np.asarray(read_rgb(prediction / row["image"].replace(".jpg", ".png")))
        expected = peak_signal_noise_ratio(reference, predicted, data_range=255)
        assert float(row["psnr"]) == pytest.approx(expected, abs=1e-3)
        expected = structural_similarity(reference, predicted, channel_axis=2, data_range=255,
                                         gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert float(row["ssim"]) == pytest.approx(expected, abs=1e-3)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["num_pairs"] == 4
    assert summary["metrics"]["psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]), abs=1e-4)


def test_files_pair_by_relative_path_and_stem_not_by_numbers(tmp_path):
    truth, prediction = tmp_path / "truth", tmp_path / "prediction"
    for folder, names in ((truth, ["img_1.jpg", "img_10.jpg", "sub/x.jpg", "only_truth.jpg", "dup.jpg"]),
                          (prediction, ["img_10.png", "img_1.webp", "sub/x.png", "x.png", "extra.png",
                                        "dup.png", "dup.webp"])):
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"")
    pairing = pair_by_stem(truth, prediction)
    assert [(p.relpath, p.prediction.name) for p in pairing.pairs] == [
        ("img_1.jpg", "img_1.webp"), ("img_10.jpg", "img_10.png"), ("sub/x.jpg", "x.png")]
    assert pairing.pairs[2].prediction.parent.name == "sub"
    assert pairing.missing_predictions == ["dup.jpg", "only_truth.jpg"]
    assert pairing.unmatched_predictions == ["extra.png", "x.png"]
    assert list(pairing.ambiguous.values()) == [["dup.png", "dup.webp"]]


def test_predictions_are_resized_without_distortion():
    truth_size = (500, 375)
    half = Image.new("RGB", (250, 188))  # 187.5 rounded: same aspect ratio up to a pixel
    assert align_to_truth(half, truth_size).size == truth_size
    square = Image.new("RGB", (512, 512))
    with pytest.raises(ValueError, match="aspect ratio differs"):
        align_to_truth(square, truth_size)
    stripes = np.zeros((400, 400, 3), np.uint8)
    stripes[:50] = stripes[-50:] = 255  # white bands that a centre crop to 4:3 removes
    cropped = align_to_truth(Image.fromarray(stripes), (400, 300), aspect_mismatch="crop")
    assert cropped.size == (400, 300) and np.asarray(cropped).max() == 0


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs"), small_photos())


def test_offline_without_weights_the_other_metrics_still_run(small_pairs, tmp_path, capsys):
    truth, prediction = small_pairs
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / WEIGHT_FILES["vgg16"].filename).write_bytes(b"not a weight file")
    status = evaluate.main(["--ground_truth_path", str(truth), "--prediction_path", str(prediction),
                            "--output_dir", str(tmp_path / "out"), "--device", "cpu",
                            "--override", f"evaluate.torch_hub_dir={hub}"])
    assert status == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    unavailable = summary["unavailable"]
    assert WEIGHT_FILES["alexnet"].filename in unavailable["lpips"]
    assert WEIGHT_FILES["inception"].filename in unavailable["fid/kid"]
    assert "not a plain weight file" in unavailable["dists"]
    assert "captions" in unavailable["clip_score"] and "--label_path" in unavailable["semantic"]
    assert set(summary["metrics"]) == {"psnr", "ssim", "ms_ssim"}
    assert all(0 < summary["metrics"][m] < 1 for m in ("ssim", "ms_ssim"))
    assert list(read_csv(tmp_path / "out" / "metrics.csv")[0]) == ["image", "psnr", "ssim", "ms_ssim"]
    assert "unavailable: lpips: needs" in capsys.readouterr().out


@pytest.fixture(scope="module")
def stand_in_hub(tmp_path_factory):
    """Random weights under the real file names and formats (LPIPS-AlexNet, DISTS-VGG, Inception)."""
    hub = tmp_path_factory.mktemp("hub")
    write_random_weights(hub, ("alexnet", "vgg16", "inception"))
    return hub


def test_with_weight_files_present_lpips_dists_fid_and_kid_are_computed(stand_in_hub, tmp_path):
    truth, prediction = make_pairs(tmp_path, small_photos((160, 136)))  # small: VGG-16 is slow
    output = tmp_path / "out"
    status = evaluate.main(["--ground_truth_path", str(truth), "--prediction_path", str(prediction),
                            "--output_dir", str(output), "--device", "cpu", "--metrics", "lpips",
                            "dists", "fid", "kid", "--override", f"evaluate.torch_hub_dir={stand_in_hub}",
                            "--override", "evaluate.patch_size=128",
                            # 64 features: the first Inception block only, and a small covariance
                            "--override", "evaluate.fid_features=64"])
    assert status == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["unavailable"] == {}
    metrics = summary["metrics"]
    for name in ("lpips", "dists", "fid", "kid", "fid_patch", "kid_patch"):
        assert metrics[name] is not None and math.isfinite(metrics[name]), name
    assert metrics["lpips"] > 0 and metrics["dists"] > 0 and metrics["fid"] > 0
    rows = read_csv(output / "metrics.csv")
    assert [list(row) for row in rows] == [["image", "lpips", "dists"]] * 3


def test_two_methods_give_plots_grid_and_summaries_and_bad_files_are_listed(tmp_path, capsys):
    images = small_photos((256, 192))
    truth = tmp_path / "truth"
    truth.mkdir()
    methods = {}
    for name, codec, quality in (("jpeg-low", "jpeg", 10), ("jpeg-high", "jpeg", 60), ("webp", "webp", 30)):
        decoded, files = tmp_path / name / "decoded", tmp_path / name / "files"
        decoded.mkdir(parents=True)
        files.mkdir(parents=True)
        for stem, image in images.items():
            Image.fromarray(image).save(truth / f"{stem}.png")
            data = encode(CODECS[codec], Image.fromarray(image), quality)
            (files / f"{stem}{CODECS[codec].extension}").write_bytes(data)
            Image.open(io.BytesIO(data)).convert("RGB").save(decoded / f"{stem}.png")
        methods[name] = (decoded, files)
    stems = sorted(images)
    (methods["webp"][0] / f"{stems[0]}.png").unlink()  # a missing prediction
    (methods["webp"][0] / f"{stems[1]}.png").write_bytes(b"broken")  # an unreadable one
    output = tmp_path / "out"
    args = ["--ground_truth_path", str(truth), "--output_dir", str(output), "--metrics", "psnr", "ssim",
            "--device", "cpu", "--grid_images", "2"]
    for name, method in (("jpeg", "jpeg-low"), ("jpeg", "jpeg-high"), ("webp", "webp")):
        args += ["--method", f"{name}={methods[method][0]},{methods[method][1]}"]
    assert evaluate.main(args) == 1
    captured = capsys.readouterr()
    assert f"missing prediction: webp: {stems[0]}.png" in captured.err
    assert f"{stems[1]}.png" in captured.err and "error: webp:" in captured.err
    summary = json.loads((output / "summary.json").read_text())
    assert [(run["method"], run["folder"], run["num_pairs"]) for run in summary["runs"]] == [
        ("jpeg", "jpeg-1", 3), ("jpeg", "jpeg-2", 3), ("webp", "webp", 1)]
    low, high = summary["runs"][0]["metrics"], summary["runs"][1]["metrics"]
    assert low["bpp"] < high["bpp"] and low["psnr"] < high["psnr"]
    expected_bpp = np.mean([bits_per_pixel((methods["jpeg-low"][1] / f"{s}.jpg").stat().st_size, 256, 192)
                            for s in stems])
    assert low["bpp"] == pytest.approx(expected_bpp, rel=1e-9)
    for name in ("rate_distortion.png", "rd_psnr.png", "rd_ssim.png", "comparison_grid.png"):
        assert Image.open(output / name).size[0] > 100
    for folder in ("jpeg-1", "jpeg-2", "webp"):
        assert (output / folder / "metrics.csv").exists() and (output / folder / "summary.json").exists()


def test_semantic_consistency_and_clip_score_with_tiny_models(tiny_config, tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    from models.encode.segmentation import load_segmenter

    config = load_config(tiny_config)
    images = small_photos((96, 72))
    truth, prediction, labels = tmp_path / "truth", tmp_path / "prediction", tmp_path / "labels"
    for folder in (truth, prediction, labels):
        folder.mkdir()
    segmenter = load_segmenter(config.segmentation)
    captions = {}
    for index, (stem, image) in enumerate(images.items()):
        Image.fromarray(image).save(truth / f"{stem}.png")
        label_map_to_pil(segmenter.predict([image])[0]).save(labels / f"{stem}.png")
        captions[f"{stem}.jpg"] = ["a cat on a table", "a dog", "two people in a field"][index]
    (labels / "prompts.json").write_text(json.dumps(captions))
    stems = sorted(images)
    shutil.copy(truth / f"{stems[0]}.png", prediction / f"{stems[0]}.png")  # perfect reconstruction
    Image.fromarray(255 - images[stems[1]]).save(prediction / f"{stems[1]}.png")  # a different image
    output = tmp_path / "out"
    status = evaluate.main(["--ground_truth_path", str(truth), "--prediction_path", str(prediction),
                            "--label_path", str(labels), "--config_path", str(tiny_config),
                            "--output_dir", str(output), "--metrics", "semantic", "clip_score",
                            "--device", "cpu"])
    assert status == 1  # one ground truth has no prediction
    rows = {row["image"]: row for row in read_csv(output / "metrics.csv")}
    assert list(next(iter(rows.values()))) == ["image", "clip_score", "sem_miou", "sem_pixel_accuracy"]
    perfect, inverted = rows[f"{stems[0]}.png"], rows[f"{stems[1]}.png"]
    assert float(perfect["sem_miou"]) == 1.0 and float(perfect["sem_pixel_accuracy"]) == 1.0
    assert float(inverted["sem_pixel_accuracy"]) < 1.0
    model = CLIPModel.from_pretrained(config.evaluate.clip_model).eval()
    processor = CLIPProcessor.from_pretrained(config.evaluate.clip_model)
    with torch.no_grad():
        inputs = processor(text=[captions[f"{stems[0]}.jpg"]], images=[np.array(images[stems[0]])],
                           return_tensors="pt", padding=True)
        image_features = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        text_features = model.get_text_features(input_ids=inputs["input_ids"],
                                                attention_mask=inputs["attention_mask"]).pooler_output
    expected = max(0.0, 100 * float(torch.nn.functional.cosine_similarity(image_features, text_features)))
    assert float(perfect["clip_score"]) == pytest.approx(expected, abs=1e-3)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["missing_predictions"] == [f"{stems[2]}.png"]
    assert 0 < summary["metrics"]["sem_miou_dataset"] <= 1


def test_hific_patches_are_the_grid_plus_the_half_shifted_grid():
    from models.evaluation.metrics import hific_patches

    image = torch.arange(3 * 512 * 768).reshape(1, 3, 512, 768)  # a Kodak-sized image
    patches = hific_patches(image, 256)
    assert patches.shape == (3 * 2 + 2 * 1, 3, 256, 256)
    assert torch.equal(patches[0], image[0, :, :256, :256])
    assert torch.equal(patches[5], image[0, :, 256:, 512:])
    assert torch.equal(patches[6], image[0, :, 128:384, 128:384])
    assert torch.equal(patches[7], image[0, :, 128:384, 384:640])
    assert hific_patches(image[..., :200, :], 256).shape[0] == 0


def test_sem_files_give_the_label_maps_captions_and_rate(tiny_config, tmp_path):
    """What process_input writes (a .sem and a PNG per image): the .sem is what counts."""
    from models.bitstream import read_sem, write_sem
    from models.encode.segmentation import load_segmenter
    from models.semantic_code import SemanticCode

    config = load_config(tiny_config)
    images = small_photos((96, 72))
    truth, labels = tmp_path / "truth", tmp_path / "labels"
    for folder in (truth, labels):
        folder.mkdir()
    segmenter = load_segmenter(config.segmentation)
    for stem, image in images.items():
        Image.fromarray(image).save(truth / f"{stem}.png")
        label_map = segmenter.predict([image])[0]
        write_sem(labels / f"{stem}.sem", SemanticCode(label_map, f"a photo called {stem}"))
        label_map_to_pil(np.zeros_like(label_map)).save(labels / f"{stem}.png")  # must be ignored
    output = tmp_path / "out"
    status = evaluate.main(["--ground_truth_path", str(truth), "--prediction_path", str(truth),
                            "--label_path", str(labels), "--bitstream_dir", str(labels),
                            "--config_path", str(tiny_config), "--output_dir", str(output),
                            "--metrics", "semantic", "--device", "cpu"])
    assert status == 0
    for row in read_csv(output / "metrics.csv"):
        stem = row["image"].removesuffix(".png")
        assert float(row["sem_miou"]) == 1.0  # the .sem map, not the all-background PNG twin
        expected = bits_per_pixel((labels / f"{stem}.sem").stat().st_size, 96, 72)
        assert float(row["bpp"]) == pytest.approx(expected)
    from models.evaluation.job import load_sem_captions

    captions = load_sem_captions(labels)
    assert {stem: captions.get(f"{stem}.png") for stem in images} == {
        stem: read_sem(labels / f"{stem}.sem").caption for stem in images}


def test_maps_of_another_label_set_are_left_out_with_a_note(tiny_config, tmp_path):
    from models.layout import write_label_set
    from models.palettes import ADE20K

    images = small_photos((96, 72))
    truth, labels = tmp_path / "truth", tmp_path / "labels"
    for folder in (truth, labels):
        folder.mkdir()
    for stem, image in images.items():
        Image.fromarray(image).save(truth / f"{stem}.png")
        Image.fromarray(np.full((72, 96), 3, dtype=np.uint8)).save(labels / f"{stem}.png")
    write_label_set(labels, ADE20K)  # the tiny segmenter predicts VOC maps
    output = tmp_path / "out"
    status = evaluate.main(["--ground_truth_path", str(truth), "--prediction_path", str(truth),
                            "--label_path", str(labels), "--config_path", str(tiny_config),
                            "--output_dir", str(output), "--metrics", "semantic", "psnr", "--device", "cpu"])
    assert status == 0
    rows = read_csv(output / "metrics.csv")
    assert len(rows) == 3 and all(row["sem_miou"] in ("", "nan") for row in rows)
    summary = json.loads((output / "summary.json").read_text())
    assert "3 ade20k" in summary["notes"]["semantic"] and "sem_miou_dataset" not in summary["metrics"]


def test_confusion_skips_void_unknown_and_unlabelled_values():
    from models.evaluation.metrics import confusion_matrix

    transmitted = np.array([[0, 1, 2, 255]], dtype=np.uint8)
    predicted = np.array([[1, 1, 0, 2]], dtype=np.uint8)
    assert confusion_matrix(transmitted, predicted, 3).sum() == 3  # 255: void
    confusion = confusion_matrix(transmitted, predicted, 3, ignored=(0,))  # ADE20K's 0, "other"
    assert confusion.sum() == 2 and confusion[1, 1] == 1 and confusion[2, 0] == 1
