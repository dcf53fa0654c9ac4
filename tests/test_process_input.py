"""process_input.py end to end with the tiny components, fully offline."""

import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import process_input
from models.layout import PROMPTS_FILE
from tests.badfiles import BAD, GOOD, IGNORED, MAX_PIXELS, make_mixed_folder
from tests.conftest import VOC_IMAGES, run_script


def digests(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def label_maps(folder):
    return {p.relative_to(folder).as_posix(): np.array(Image.open(p))
            for p in sorted(folder.rglob("*.png"))}


@pytest.fixture(scope="module")
def encoded(tiny_config, tmp_path_factory):
    """The 14 VOC photos encoded once, in a sub-folder layout (train/ and val/)."""
    root = tmp_path_factory.mktemp("encode")
    input_dir = root / "original_images"
    for index, photo in enumerate(sorted(VOC_IMAGES.glob("*.jpg"))):
        split = "train" if index < 10 else "val"
        (input_dir / split).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, input_dir / split / photo.name)
    before = digests(input_dir)
    status = process_input.main(["--config_path", str(tiny_config), "--input_dir", str(input_dir),
                                 "--output_dir", str(root / "segmented"), "--device", "cpu"])
    assert status == 0
    assert digests(input_dir) == before  # inputs untouched
    return input_dir, root / "segmented"


def test_every_image_gets_a_label_map_of_its_size_and_a_caption(encoded):
    input_dir, output_dir = encoded
    maps = label_maps(output_dir)
    assert len(maps) == 14
    for relpath, label_map in maps.items():
        source = Image.open(input_dir / relpath.replace(".png", ".jpg"))
        assert label_map.shape == (source.height, source.width)
        assert label_map.dtype == np.uint8 and label_map.max() <= 20
        assert Image.open(output_dir / relpath).mode == "P"
    captions = json.loads((output_dir / PROMPTS_FILE).read_text())
    assert sorted(captions) == sorted(p.relative_to(input_dir).as_posix() for p in input_dir.rglob("*.jpg"))
    assert all(isinstance(c, str) and c for c in captions.values())
    assert not list(output_dir.glob(".prompts.rank*"))


def test_rerun_skips_finished_images_and_redoes_missing_ones(encoded, tiny_config, capsys):
    input_dir, output_dir = encoded
    args = ["--config_path", str(tiny_config), "--input_dir", str(input_dir), "--output_dir",
            str(output_dir), "--device", "cpu"]
    before = label_maps(output_dir)
    mtimes = {p: p.stat().st_mtime_ns for p in output_dir.rglob("*.png")}
    assert process_input.main(args) == 0
    assert "encoded 0, already done 14" in capsys.readouterr().out
    assert mtimes == {p: p.stat().st_mtime_ns for p in output_dir.rglob("*.png")}
    (output_dir / "val" / "2010_004479.png").unlink()
    assert process_input.main(args) == 0
    assert "encoded 1, already done 13" in capsys.readouterr().out
    after = label_maps(output_dir)
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], before[k]) for k in before)  # deterministic
    assert process_input.main(args + ["--overwrite"]) == 0
    assert "encoded 14, already done 0" in capsys.readouterr().out


def test_an_interrupted_run_is_resumed_without_redoing_work(encoded, tiny_config, tmp_path, capsys):
    input_dir, finished = encoded
    output_dir = tmp_path / "out"
    shutil.copytree(finished, output_dir)
    captions = json.loads((output_dir / PROMPTS_FILE).read_text())
    # What a run killed after its first batch leaves: 4 label maps, their captions in a partial file.
    kept = sorted(captions)[:4]
    (output_dir / PROMPTS_FILE).unlink()
    for relpath in captions:
        if relpath not in kept:
            (output_dir / relpath).with_suffix(".png").unlink()
    lines = [json.dumps({"image": k, "caption": captions[k]}) for k in kept]
    (output_dir / ".prompts.rank0.jsonl").write_text("\n".join(lines) + '\n{"image": "cut sh')
    status = process_input.main(["--config_path", str(tiny_config), "--input_dir", str(input_dir),
                                 "--output_dir", str(output_dir), "--device", "cpu"])
    assert status == 0
    assert "encoded 10, already done 4" in capsys.readouterr().out
    assert json.loads((output_dir / PROMPTS_FILE).read_text()) == captions
    assert not list(output_dir.glob(".prompts.rank*"))


def test_mixed_good_and_bad_files(tiny_config, tmp_path):
    input_dir = make_mixed_folder(tmp_path / "mixed")
    before = digests(input_dir)
    result = run_script("process_input.py", "--config_path", tiny_config, "--input_dir", input_dir,
                        "--output_dir", tmp_path / "out", "--device", "cpu",
                        "--max_pixels", MAX_PIXELS)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == len(BAD)
    for name, reason in BAD.items():
        assert any(line.startswith(f"error: {name}: ") and reason in line for line in error_lines)
    for name in IGNORED:
        assert f"skipped: {name}: not an image file" in result.stderr
    assert f"encoded {len(GOOD)}, already done 0, failed {len(BAD)}, ignored 1" in result.stdout
    maps = label_maps(tmp_path / "out")
    assert sorted(maps) == sorted(name.rsplit(".", 1)[0] + ".png" for name in GOOD)
    for name, (width, height) in GOOD.items():
        assert maps[name.rsplit(".", 1)[0] + ".png"].shape == (height, width)
    captions = json.loads((tmp_path / "out" / PROMPTS_FILE).read_text())
    assert sorted(captions) == sorted(GOOD)
    assert digests(input_dir) == before


def test_clashing_output_names_are_reported(tiny_config, tmp_path, capsys):
    input_dir = tmp_path / "in"
    input_dir.mkdir()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(input_dir / "a.jpg")
    Image.new("RGB", (20, 20), (10, 200, 10)).save(input_dir / "a.png")
    status = process_input.main(["--config_path", str(tiny_config), "--input_dir", str(input_dir),
                                 "--output_dir", str(tmp_path / "out"), "--device", "cpu"])
    assert status == 1
    assert "error: a.png: its label map a.png would overwrite the one of a.jpg" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / PROMPTS_FILE).read_text()).keys() == {"a.jpg"}


def test_output_inside_input_is_refused(tiny_config, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    status = process_input.main(["--config_path", str(tiny_config), "--input_dir", str(tmp_path / "in"),
                                 "--output_dir", str(tmp_path / "in" / "out")])
    assert status == 2
    assert "inside --input_dir" in capsys.readouterr().err
    assert not (tmp_path / "in" / "out").exists()


def test_missing_segmentation_checkpoint_is_one_clear_line(tiny_config, tmp_path):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "in" / "a.jpg")
    result = run_script("process_input.py", "--config_path", tiny_config, "--input_dir", tmp_path / "in",
                        "--output_dir", tmp_path / "out", "--device", "cpu",
                        "--segmentation_ckpt", tmp_path / "missing.pth")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "segmentation checkpoint not found" in result.stderr


def test_two_processes_write_the_same_outputs_as_one(encoded, tiny_config, tmp_path):
    input_dir, single = encoded
    result = run_script("process_input.py", "--config_path", tiny_config, "--input_dir", input_dir,
                        "--output_dir", tmp_path / "ddp", "--accelerator", "cpu", "--devices", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "encoded 14" in result.stdout
    ours, reference = label_maps(tmp_path / "ddp"), label_maps(single)
    assert ours.keys() == reference.keys()
    assert all(np.array_equal(ours[k], reference[k]) for k in reference)
    assert (json.loads((tmp_path / "ddp" / PROMPTS_FILE).read_text())
            == json.loads((single / PROMPTS_FILE).read_text()))
