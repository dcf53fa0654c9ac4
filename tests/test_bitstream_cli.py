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
from models.layout import LABEL_SET_FILE, PROMPTS_FILE, find_label_set, write_label_set
from models.palettes import ADE20K, UINT8, VOC, custom_label_set
from models.rate import bits_per_pixel
from tests.conftest import DATA, REPO, VOC_IMAGES, VOC_MASKS

MASK = VOC_MASKS / "2007_000032.png"
ADE_MAP = DATA / "ade-samples" / "annotations" / "ADE_train_00000970.png"  # values 0..150, here up to 61


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


def info_of(sem, capsys) -> dict:
    assert main(["info", str(sem)]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])


def palette_of(png) -> np.ndarray:
    """The (256, 3) colours of a palette PNG."""
    with Image.open(png) as image:
        assert image.mode == "P"
        return np.array(image.getpalette(), dtype=np.uint8).reshape(-1, 3)[:256]


def test_an_ade20k_map_with_label_set_flag(tmp_path, capsys):
    sem, png = tmp_path / "ade.sem", tmp_path / "ade.png"
    assert main(["encode", str(ADE_MAP), str(sem), "--label_set", "ade20k", "--grid", "64"]) == 0
    info = info_of(sem, capsys)
    assert info["label_set"] == "ade20k" and info["version"] == 2 and info["bytes"] <= 120
    assert main(["decode", str(sem), str(png)]) == 0
    assert np.array_equal(palette_of(png), ADE20K.colors)
    assert set(np.unique(np.array(Image.open(png)))) <= set(info["labels"])


def test_the_label_set_comes_from_the_maps_folder(tmp_path, capsys):
    folder = tmp_path / "ade" / "val"
    folder.mkdir(parents=True)
    shutil.copy(ADE_MAP, folder / "map.png")
    assert main(["encode", str(folder / "map.png"), str(tmp_path / "voc.sem")]) == 1  # VOC by default
    error = capsys.readouterr().err
    assert f"{folder / 'map.png'}: class ids 61 outside 0..20" in error and "--label_set" in error
    write_label_set(tmp_path / "ade", ADE20K)  # a folder above the map's
    assert main(["encode", str(folder / "map.png"), str(tmp_path / "ade.sem")]) == 0
    assert info_of(tmp_path / "ade.sem", capsys)["label_set"] == "ade20k"
    assert main(["encode", str(folder / "map.png"), str(tmp_path / "u.sem"), "--label_set", "uint8"]) == 0
    assert info_of(tmp_path / "u.sem", capsys)["label_set"] == "uint8"  # the flag wins
    assert main(["encode", str(folder / "map.png"), str(tmp_path / "x.sem"), "--label_set", "ade"]) == 1
    assert "label set 'ade' is not built in" in capsys.readouterr().err
    assert not (tmp_path / "x.sem").exists()
    (tmp_path / "ade" / LABEL_SET_FILE).write_text("[1, 2]")
    assert main(["encode", str(folder / "map.png"), str(tmp_path / "y.sem")]) == 1
    assert f"{tmp_path / 'ade' / LABEL_SET_FILE}: expected a JSON object" in capsys.readouterr().err
    assert main(["encode", str(ADE_MAP), str(tmp_path / "z.sem")]) == 0  # tests/data's sidecar says ade20k
    assert info_of(tmp_path / "z.sem", capsys)["label_set"] == "ade20k"


def test_a_custom_label_set_round_trips_its_name_and_colours(tmp_path, capsys):
    folder = tmp_path / "codes"
    folder.mkdir()
    rooms = custom_label_set("rooms-v1", ["floor", "wall", "door"], colors=[[9, 9, 9], [200, 0, 0], [0, 0, 200]])
    write_label_set(folder, rooms)
    label_map = np.zeros((30, 40), dtype=np.uint8)
    label_map[5:25, 10:30] = 2
    Image.fromarray(label_map, mode="L").save(folder / "map.png")
    assert main(["encode", str(folder / "map.png"), str(folder / "map.sem")]) == 0
    assert info_of(folder / "map.sem", capsys)["label_set"] == "rooms-v1"
    assert main(["decode", str(folder / "map.sem"), str(folder / "back.png")]) == 0
    assert np.array_equal(np.array(Image.open(folder / "back.png")), label_map)
    assert np.array_equal(palette_of(folder / "back.png")[:3], rooms.colors[:3])
    capsys.readouterr()
    shutil.copy(folder / "map.sem", tmp_path / "alone.sem")  # no label_set.json above it
    assert main(["decode", str(tmp_path / "alone.sem"), str(tmp_path / "alone.png")]) == 0
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: ") and "uint8 colours" in warning[0]
    assert np.array_equal(palette_of(tmp_path / "alone.png"), UINT8.colors)
    Image.fromarray(np.full((4, 4), 3, np.uint8), mode="L").save(folder / "bad.png")
    assert main(["encode", str(folder / "bad.png"), str(folder / "bad.sem")]) == 1
    assert "class ids 3 outside 0..2 of the rooms-v1 label set" in capsys.readouterr().err


def test_voc_is_the_default_and_stays_version_1(tmp_path, capsys):
    sem, png = tmp_path / "a.sem", tmp_path / "a.png"
    assert main(["encode", str(MASK), str(sem)]) == 0
    info = info_of(sem, capsys)
    assert info["label_set"] == "voc" and info["version"] == 1
    assert main(["decode", str(sem), str(png)]) == 0
    assert np.array_equal(palette_of(png), VOC.colors)


def test_help_names_the_label_set_flag():
    result = subprocess.run([sys.executable, "-m", "models.bitstream", "encode", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert result.returncode == 0 and "--label_set" in result.stdout


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
                   if p.is_file() and p.name != LABEL_SET_FILE)
    assert len(files) == 3 and all(name.endswith(".sem") for name in files)
    assert find_label_set(output_dir).name == "voc" == read_sem(output_dir / files[0]).label_set
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
