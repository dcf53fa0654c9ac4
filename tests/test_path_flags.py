"""Every path flag of every script takes any path: '#', spaces, quotes, ':', '=' and non-ASCII letters
arrive unchanged (a value spliced into YAML override text would be cut at ' #')."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

import compress_images
import evaluate
import process_decoding
import process_input
import train
from models.config import load_config
from models.quickstart.shapes import write_shapes_dataset
from tests.conftest import VOC_IMAGES
from tests.threads import one_cpu_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
AWKWARD = "run #1 'q' \"d\" a:b=c Grüße ÆØÅ"  # every character that broke or could break a path


@pytest.fixture(scope="module")
def root(tiny_config, tmp_path_factory) -> Path:
    """Inputs, a config and the models under a folder with an awkward name. The config names no
    segmenter, SD model or ControlNet, so only the path flags can lead the scripts to them."""
    root = tmp_path_factory.mktemp("paths") / AWKWARD
    (root / "images #1").mkdir(parents=True)
    for photo in sorted(VOC_IMAGES.glob("*.jpg"))[:2]:
        shutil.copy(photo, root / "images #1" / photo.name)
    config = load_config(tiny_config)
    shutil.copy(config.segmentation.checkpoint, root / "segmenter #1.pth")
    shutil.copytree(config.diffusion.sd_model_path, root / "sd 1.5 #x")
    shutil.copytree(config.diffusion.controlnet_path, root / "control=net")
    settings = yaml.safe_load(tiny_config.read_text(encoding="utf-8"))
    settings["segmentation"]["checkpoint"] = None
    settings["diffusion"].update(sd_model_path=str(root / "no SD here"), controlnet_path=None)
    (root / "config #1.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    write_shapes_dataset(root / "data #1", {"train": 2, "val": 1}, size=64, seed=0)
    return root


@pytest.fixture(scope="module")
def encoded(root) -> Path:
    status = process_input.main(["--input_dir", str(root / "images #1"), "--output_dir", str(root / "encoded #1"),
                                 "--config_path", str(root / "config #1.yaml"),
                                 "--segmentation_ckpt", str(root / "segmenter #1.pth"), "--device", "cpu"])
    assert status == 0
    return root / "encoded #1"


def test_process_input(encoded):
    assert sorted(path.name for path in encoded.iterdir()) == [
        "2007_000032.png", "2007_000032.sem", "2007_000039.png", "2007_000039.sem", "label_set.json", "prompts.json"]


def test_process_decoding(root, encoded):
    output_dir = root / "decoded #1"
    status = process_decoding.main([
        "--config_path", str(root / "config #1.yaml"), "--checkpoint_path", str(root / "control=net"),
        "--sd_model_path", str(root / "sd 1.5 #x"), "--input_path", str(encoded), "--output_dir", str(output_dir),
        "--prompt_json_path", str(encoded / "prompts.json"), "--num_inference_steps", "2", "--accelerator", "cpu"])
    assert status == 0
    settings = json.loads((output_dir / "manifest.json").read_text(encoding="utf-8"))["settings"]
    assert settings["checkpoint"] == str(root / "control=net")
    assert settings["sd_model_path"] == str(root / "sd 1.5 #x")
    assert len(list(output_dir.glob("*.png"))) == 2


def test_train(root):
    common = ["--config_path", str(root / "config #1.yaml"), "--sd_model_path", str(root / "sd 1.5 #x"),
              "--data_root", str(root / "data #1"), "--output_dir", str(root / "run #1"), "--accelerator", "cpu",
              "--batch_size_per_gpu", "1", "--no_progress_bar"]
    assert train.main(common + ["--max_steps", "1"]) == 0
    checkpoint = root / "run #1" / "checkpoints" / "step-0000001.ckpt"
    assert train.main(common + ["--max_steps", "2", "--resume", str(checkpoint)]) == 0
    used = yaml.safe_load((root / "run #1" / "config.yaml").read_text(encoding="utf-8"))
    assert used["diffusion"]["sd_model_path"] == str(root / "sd 1.5 #x")
    assert used["train"]["data_root"] == str(root / "data #1")
    assert (root / "run #1" / "checkpoints" / "step-0000002.ckpt").is_file()


@pytest.fixture(scope="module")
def compressed(root, encoded) -> Path:
    status = compress_images.main(["--input-dir", str(root / "images #1"), "--output-dir", str(root / "codecs #1"),
                                   "--match-sizes-from", str(encoded), "--codecs", "jpeg", "webp"])
    assert status == 0
    return root / "codecs #1"


def test_compress_images(compressed):
    assert len(list((compressed / "webp_decoded").glob("*.png"))) == 2


def test_evaluate(root, encoded, compressed):
    common = ["--ground_truth_path", str(root / "images #1"), "--label_path", str(encoded),
              "--prompt_json_path", str(encoded / "prompts.json"), "--config_path", str(root / "config #1.yaml"),
              "--segmentation_ckpt", str(root / "segmenter #1.pth"), "--metrics", "psnr", "semantic"]
    predictions = compressed / "jpeg_decoded"
    assert evaluate.main(common + ["--prediction_path", str(predictions), "--bitstream_dir", str(encoded),
                                   "--output_dir", str(root / "evaluation #1")]) == 0
    summary = json.loads((root / "evaluation #1" / "summary.json").read_text(encoding="utf-8"))
    assert summary["prediction_path"] == str(predictions) and summary["bitstream_dir"] == str(encoded)
    assert summary["metrics"]["sem_miou"] is not None  # the segmenter loaded from its awkward path
    method = f"jpeg={predictions},{compressed / 'jpeg'}"
    assert evaluate.main(common + ["--method", method, "--output_dir", str(root / "methods #1")]) == 0
    runs = json.loads((root / "methods #1" / "summary.json").read_text(encoding="utf-8"))["runs"]
    assert runs[0]["bitstream_dir"] == str(compressed / "jpeg")
