"""`python -m models.bitstream` and the .sem outputs of process_input.py."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import process_input
from models.bitstream import read_sem
from models.bitstream.__main__ import main
from models.layout import PROMPTS_FILE
from models.rate import bits_per_pixel
from tests.conftest import REPO, VOC_IMAGES, VOC_MASKS

MASK = VOC_MASKS / "2007_000032.png"


def test_encode_info_decode_round_trip(tmp_path, capsys):
    sem, png = tmp_path / "a.sem", tmp_path / "a.png"
    caption = ["--caption", "a plane on a runway"]
    assert main(["encode", str(MASK), str(sem), *caption, "--seed", "5"]) == 0
    assert main(["info", str(sem)]) == 0
    info = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert info["width"] == 500 and info["height"] == 281 and info["mode"] == "lossless"
    assert info["bytes"] == sem.stat().st_size and info["seed"] == 5
    assert info["bits_per_pixel"] == bits_per_pixel(sem.stat().st_size, 500, 281)
    assert main(["decode", str(sem), str(png)]) == 0
    assert capsys.readouterr().out.strip() == "a plane on a runway"
    assert Image.open(png).mode == "P"
    assert np.array_equal(np.array(Image.open(png)), np.array(Image.open(MASK)))


def test_compact_mode_from_the_command_line(tmp_path, capsys):
    sem = tmp_path / "a.sem"
    assert main(["encode", str(MASK), str(sem), "--grid", "32"]) == 0
    assert main(["info", str(sem)]) == 0
    info = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert info["mode"] == "compact" and info["grid"] == 32 and info["caption"] == ""
    assert main(["decode", str(sem), str(tmp_path / "b.png")]) == 0
    assert np.array(Image.open(tmp_path / "b.png")).shape == (281, 500)


@pytest.mark.parametrize("content", [b"", b"SEM\x02garbage", b"not a sem file at all"])
def test_bad_files_print_one_line_and_exit_non_zero(tmp_path, content):
    bad = tmp_path / "bad.sem"
    bad.write_bytes(content)
    for command in (["info", str(bad)], ["decode", str(bad), str(tmp_path / "x.png")]):
        result = subprocess.run([sys.executable, "-m", "models.bitstream", *command], cwd=REPO,
                                capture_output=True, text=True, timeout=120, env=os.environ.copy())
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: ")
    assert not (tmp_path / "x.png").exists()


def test_missing_and_non_label_map_inputs(tmp_path, capsys):
    assert main(["decode", str(tmp_path / "missing.sem"), str(tmp_path / "x.png")]) == 1
    assert "missing.sem: cannot read" in capsys.readouterr().err
    rgb = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(rgb)
    assert main(["encode", str(rgb), str(tmp_path / "x.sem")]) == 1
    assert "photo.png: a label map must be a palette or gray PNG" in capsys.readouterr().err


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos") / "in"
    (folder / "sub").mkdir(parents=True)
    for index, photo in enumerate(sorted(VOC_IMAGES.glob("*.jpg"))[:3]):
        shutil.copy(photo, folder / ("sub" if index else "") / photo.name)
    return folder


def encode(tiny_config, input_dir, output_dir, *flags):
    return process_input.main(["--config_path", str(tiny_config), "--input_dir", str(input_dir),
                               "--output_dir", str(output_dir), "--device", "cpu", *flags])


def test_process_input_writes_sem_files_next_to_the_label_maps(tiny_config, photos, tmp_path,
                                                               capsys):
    output_dir = tmp_path / "both"
    assert encode(tiny_config, photos, output_dir, "--seed", "11") == 0
    captions = json.loads((output_dir / PROMPTS_FILE).read_text())
    assert len(captions) == 3
    for relpath, caption in captions.items():
        code = read_sem((output_dir / relpath).with_suffix(".sem"))
        label_map = np.array(Image.open((output_dir / relpath).with_suffix(".png")))
        assert np.array_equal(code.label_map, label_map)  # lossless by default
        assert code.caption == caption and code.seed == 11
    # The resume logic wants every output: a missing .sem file alone brings its image back.
    next(output_dir.rglob("*.sem")).unlink()
    capsys.readouterr()
    assert encode(tiny_config, photos, output_dir, "--seed", "11") == 0
    assert "encoded 1, already done 2" in capsys.readouterr().out
    assert len(list(output_dir.rglob("*.sem"))) == 3


def test_process_input_sem_only_in_compact_mode(tiny_config, photos, tmp_path, capsys):
    output_dir = tmp_path / "sem"
    assert encode(tiny_config, photos, output_dir, "--format", "sem", "--grid", "16") == 0
    files = sorted(p.relative_to(output_dir).as_posix() for p in output_dir.rglob("*")
                   if p.is_file())
    assert len(files) == 3 and all(name.endswith(".sem") for name in files)
    for name in files:
        source = Image.open(photos / name.replace(".sem", ".jpg"))
        code = read_sem(output_dir / name)
        assert code.label_map.shape == (source.height, source.width) and code.caption
    capsys.readouterr()
    # Asking for PNGs as well makes every image due again (its PNG is missing).
    assert encode(tiny_config, photos, output_dir, "--format", "png") == 0
    assert "encoded 3, already done 0" in capsys.readouterr().out
    assert len(list(output_dir.rglob("*.png"))) == 3


def test_process_input_rejects_a_bad_grid(tiny_config, photos, tmp_path, capsys):
    assert encode(tiny_config, photos, tmp_path / "out", "--grid", "0") == 2
    assert "--grid must be at least 1" in capsys.readouterr().err
