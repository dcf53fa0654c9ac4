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


SSIM_TOLERANCE = 1e-5  # our float32 against scikit-image's float64 (seen: below 3e-6)


def test_psnr_and_ssim_agree_with_scikit_image_on_real_pairs(tmp_path):
    from torchmetrics.functional.image import structural_similarity_index_measure

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
    padded_errors = []
    for row in rows:
        reference = np.asarray(read_rgb(truth / row["image"]))
        predicted = np.asarray(read_rgb(prediction / row["image"].replace(".jpg", ".png")))
        expected = peak_signal_noise_ratio(reference, predicted, data_range=255)
        assert float(row["psnr"]) == pytest.approx(expected, abs=1e-3)
        expected = structural_similarity(reference, predicted, channel_axis=2, data_range=255,
                                         gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert float(row["ssim"]) == pytest.approx(expected, abs=SSIM_TOLERANCE)
        # Broken on purpose: torchmetrics' SSIM also averages windows over a reflect-padded border.
        padded = float(structural_similarity_index_measure(torch.tensor(predicted).permute(2, 0, 1)[None] / 255.0,
                                                           torch.tensor(reference).permute(2, 0, 1)[None] / 255.0,
                                                           data_range=1.0))
        padded_errors.append(abs(padded - expected))
    assert max(padded_errors) > 10 * SSIM_TOLERANCE  # so this test would catch that convention
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
    # every method is compared on the one image all three scored; the others are listed, not averaged
    assert [(run["method"], run["folder"], run["num_pairs"]) for run in summary["runs"]] == [
        ("jpeg", "jpeg-1", 1), ("jpeg", "jpeg-2", 1), ("webp", "webp", 1)]
    assert summary["runs"][0]["left_out"] == {f"{stems[0]}.png": "no prediction in webp",
                                              f"{stems[1]}.png": "not scored in webp"}
    assert f"not compared: jpeg-1: {stems[0]}.png: no prediction in webp" in captured.out
    low, high = summary["runs"][0]["metrics"], summary["runs"][1]["metrics"]
    assert low["bpp"] < high["bpp"] and low["psnr"] < high["psnr"]
    expected_bpp = bits_per_pixel((methods["jpeg-low"][1] / f"{stems[2]}.jpg").stat().st_size, 256, 192)
    assert low["bpp"] == pytest.approx(expected_bpp, rel=1e-9)
    assert [row["image"] for row in read_csv(output / "jpeg-1" / "metrics.csv")] == [f"{stems[2]}.png"]
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


def test_maps_of_another_label_set_are_missing_with_the_reason(tiny_config, tmp_path):
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
    assert len(rows) == 3 and all(row["sem_miou"] == "" for row in rows)
    summary = json.loads((output / "summary.json").read_text())
    missing = summary["missing"]["sem_miou"]
    assert missing["count"] == 3 and "sem_miou_dataset" not in summary["metrics"]
    assert all("its label map is ade20k, the segmenter predicts voc" in why for why in missing["images"].values())


def test_confusion_skips_void_unknown_and_unlabelled_values():
    from models.evaluation.metrics import confusion_matrix

    transmitted = np.array([[0, 1, 2, 255]], dtype=np.uint8)
    predicted = np.array([[1, 1, 0, 2]], dtype=np.uint8)
    assert confusion_matrix(transmitted, predicted, 3).sum() == 3  # 255: void
    confusion = confusion_matrix(transmitted, predicted, 3, ignored=(0,))  # ADE20K's 0, "other"
    assert confusion.sum() == 2 and confusion[1, 1] == 1 and confusion[2, 0] == 1


def test_odd_images_never_abort_a_run(tiny_config, stand_in_hub, tmp_path):
    """Normal photos plus a 4x4 and a 2x2 pair, every metric: the run finishes, the small pairs are
    listed with reasons, the others are scored, and every mean says over how many images."""
    images = small_photos((176, 168))  # MS-SSIM needs sides over 160
    rng = np.random.default_rng(0)
    images.update({"tiny4": rng.integers(0, 256, (4, 4, 3), dtype=np.uint8),
                   "tiny2": rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)})
    truth, prediction = make_pairs(tmp_path, images)
    labels = tmp_path / "labels"
    labels.mkdir()
    for stem, image in images.items():
        label_map_to_pil(np.zeros(image.shape[:2], dtype=np.uint8)).save(labels / f"{stem}.png")
    captions = {f"{stem}.jpg": f"a photo of {stem}" for stem in images}
    (tmp_path / "prompts.json").write_text(json.dumps(captions))
    output = tmp_path / "out"
    status = evaluate.main(["--ground_truth_path", str(truth), "--prediction_path", str(prediction),
                            "--prompt_json_path", str(tmp_path / "prompts.json"), "--config_path", str(tiny_config),
                            "--label_path", str(labels), "--output_dir", str(output), "--device", "cpu",
                            "--metrics", "psnr", "ssim", "ms_ssim", "lpips", "dists", "clip_score", "clip_s", "fid",
                            "kid", "semantic", "--override", f"evaluate.torch_hub_dir={stand_in_hub}",
                            "--override", "evaluate.fid_features=64", "--override", "evaluate.patch_size=128"])
    assert status == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["num_pairs"] == 5 and summary["unavailable"] == {}
    missing = {column: entry["images"] for column, entry in summary["missing"].items()}
    for column in ("ssim", "ms_ssim", "lpips"):
        assert set(missing[column]) == {"tiny4.jpg", "tiny2.jpg"}, column
        assert summary["counts"][column] == 3 and summary["metrics"][column] is not None
    assert "needs both sides at least 11 px, the image is 2x2" in missing["ssim"]["tiny2.jpg"]
    assert "lpips (alex) needs both sides at least 31 px, the image is 4x4" in missing["lpips"]["tiny4.jpg"]
    assert summary["failures"] == {}  # every gap foreseen and explained
    assert summary["counts"]["psnr"] == 5 and summary["counts"]["fid"] == 5
    assert summary["counts"]["sem_miou"] + len(missing.get("sem_miou", {})) == 5
    assert set(missing.get("sem_miou", {})) <= {"tiny4.jpg", "tiny2.jpg"}
    assert "5 images, not more than its 64 features" in summary["small_sample"]["fid"]
    assert "subset size 1000" in summary["small_sample"]["kid"] and summary["metrics"]["kid_std"] is None
    rows = {row["image"]: row for row in read_csv(output / "metrics.csv")}
    assert rows["tiny2.jpg"]["ssim"] == "" and float(rows["tiny2.jpg"]["psnr"]) > 0  # missing: an empty cell
    assert float(rows["tiny2.jpg"]["clip_s"]) >= 0  # CLIP resizes any image
    clip_s, clip_score = float(rows["tiny4.jpg"]["clip_s"]), float(rows["tiny4.jpg"]["clip_score"])
    assert clip_s <= 2.5 and clip_score <= 100


def test_published_points_are_drawn_beside_the_measured_methods(tmp_path, capsys, monkeypatch):
    from models.evaluation import plots
    from models.evaluation.reference_points import read_reference_points, reference_curves

    images = small_photos((256, 192))
    truth = tmp_path / "truth"
    truth.mkdir()
    arguments = ["--ground_truth_path", str(truth), "--output_dir", str(tmp_path / "out"), "--metrics", "psnr",
                 "--device", "cpu", "--reference_points", "clic2020"]
    for quality in (10, 40):
        decoded, files = tmp_path / f"decoded-{quality}", tmp_path / f"files-{quality}"
        decoded.mkdir()
        files.mkdir()
        for stem, image in images.items():
            Image.fromarray(image).save(truth / f"{stem}.png")
            data = encode(CODECS["jpeg"], Image.fromarray(image), quality)
            (files / f"{stem}.jpg").write_bytes(data)
            Image.open(io.BytesIO(data)).convert("RGB").save(decoded / f"{stem}.png")
        arguments += ["--method", f"jpeg={decoded},{files}"]
    drawn = {}
    original = plots.plot_rate_distortion

    def recording(curves, metric, path=None, axis=None, references=None):
        original(curves, metric, path, axis, references)
        if path is not None:  # the single-metric figure: remember what its axis got
            drawn[metric] = references

    monkeypatch.setattr(plots, "plot_rate_distortion", recording)
    monkeypatch.setattr("models.evaluation.report.plot_rate_distortion", recording)
    assert evaluate.main(arguments) == 0
    expected = reference_curves(read_reference_points(), "clic2020")
    assert drawn["psnr"] == expected and "MS-ILLM" in expected and "StableCodec" in expected
    assert Image.open(tmp_path / "out" / "rd_psnr.png").size[0] > 100
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {point["method"] for point in summary["reference_points"]} == set(expected)
    assert all(point["source"] for point in summary["reference_points"])
    assert evaluate.main(["nowhere" if argument == "clic2020" else argument for argument in arguments]) == 2
    assert "there are: clic2020, div2k, kodak" in capsys.readouterr().err


def test_reference_markers_are_on_the_axis():
    import matplotlib.pyplot as plt

    from models.evaluation.plots import plot_rate_distortion

    figure, axis = plt.subplots()
    references = {"MS-ILLM": [(0.0346, {"lpips": 0.114}), (0.0633, {"lpips": 0.080})],
                  "StableCodec": [(0.00444, {"lpips": 0.256, "psnr": 22.13})]}
    plot_rate_distortion({"ours": [(0.003, {"lpips": 0.4}), (0.01, {"lpips": 0.3})]}, "lpips", axis=axis,
                         references=references)
    lines = {line.get_label(): line for line in axis.get_lines()}
    assert set(lines) == {"ours", "MS-ILLM (published)", "StableCodec (published)"}
    assert list(lines["MS-ILLM (published)"].get_xdata()) == [0.0346, 0.0633]
    assert lines["MS-ILLM (published)"].get_linestyle() == "None" and axis.get_xscale() == "log"
    plt.close(figure)


def test_clip_s_is_hessel_et_al_s_definition(tiny_config):
    from transformers import CLIPModel, CLIPProcessor

    from models.evaluation.metrics import CLIPScoreMetric, ImagePair

    config = load_config(tiny_config)
    image = small_photos((96, 72))["2007_000039"]
    caption = "a red car"  # the tiny random CLIP gives this pair a positive cosine, with and without the prefix
    pair = ImagePair(image, image, torch.device("cpu"), caption=caption)
    model = CLIPModel.from_pretrained(config.evaluate.clip_s_model).eval()
    processor = CLIPProcessor.from_pretrained(config.evaluate.clip_s_model)

    def cosine(text: str) -> float:
        with torch.no_grad():
            inputs = processor(text=[text], images=[image], return_tensors="pt", padding=True)
            image_features = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
            text_features = model.get_text_features(input_ids=inputs["input_ids"],
                                                    attention_mask=inputs["attention_mask"]).pooler_output
        return float(torch.nn.functional.cosine_similarity(image_features, text_features))

    prefixed, plain = cosine("A photo depicts " + caption), cosine(caption)
    assert prefixed > 0.02 and plain > 0.02 and abs(prefixed - plain) > 0.005  # so the checks below can fail
    assert CLIPScoreMetric.clip_s(config.evaluate, torch.device("cpu"))(pair)["clip_s"] == pytest.approx(
        2.5 * prefixed, abs=1e-4)
    assert CLIPScoreMetric(config.evaluate.clip_model, torch.device("cpu"))(pair)["clip_score"] == pytest.approx(
        100 * plain, abs=1e-2)  # torchmetrics' CLIP score: no prefix, 100 x


def test_an_unforeseen_metric_failure_is_recorded_and_fails_the_run(tmp_path, monkeypatch, capsys):
    from models.evaluation import metrics

    photos = small_photos((64, 48))
    truth, prediction = make_pairs(tmp_path, photos)
    stem = sorted(photos)[1]
    original = metrics.PSNRMetric.__call__

    def flaky(self, pair):  # fails on one image only
        if pair.truth.shape == (48, 64, 3) and np.array_equal(pair.truth, np.asarray(read_rgb(truth / f"{stem}.jpg"))):
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self, pair)

    monkeypatch.setattr(metrics.PSNRMetric, "__call__", flaky)
    output = tmp_path / "out"
    status = evaluate.main(["--ground_truth_path", str(truth), "--prediction_path", str(prediction),
                            "--output_dir", str(output), "--metrics", "psnr", "ssim", "--device", "cpu"])
    assert status == 1  # the other pairs and metrics are scored, but the run says it is incomplete
    summary = json.loads((output / "summary.json").read_text())
    assert summary["failures"] == {"psnr": 1} and summary["counts"] == {"psnr": 2, "ssim": 3}
    assert "RuntimeError: CUDA out of memory (simulated)" in summary["missing"]["psnr"]["images"][f"{stem}.jpg"]
    assert "psnr failed on 1 pair(s)" in capsys.readouterr().err


def test_a_read_only_output_folder_or_a_signal_is_one_line_and_its_own_status(tmp_path, capsys):
    """Checked before the metric networks load; a SIGTERM (sent while scoring, from a timer) stops
    the run at once, since results are written only at the end."""
    import os
    import signal
    import threading

    from models.jobcontrol import ExitStatus
    from tests.faults import error_lines, read_only_folder

    truth = VOC_IMAGES
    out = tmp_path / "out"
    args = ["--ground_truth_path", str(truth), "--prediction_path", str(truth), "--output_dir", str(out),
            "--metrics", "psnr", "ssim", "--device", "cpu"]
    with read_only_folder(out):
        assert evaluate.main(args) == ExitStatus.OUTPUT
    assert error_lines(capsys.readouterr().err) == [
        f"error: cannot write {out}: Read-only file system; make it writable or choose another output folder"]
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # pytest survives a signal outside main()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))  # scoring 14 photos takes > 1 s
    try:
        timer.start()
        status = evaluate.main(args)
        timer.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert status == 128 + signal.SIGTERM
    assert capsys.readouterr().err.splitlines()[-1] == (
        "interrupted (SIGTERM): nothing was written (results are written at the end); run the same command again")
    assert not (out / "metrics.csv").exists()
