"""Decoding .sem files: what process_input writes is what process_decoding reads."""

import json

import numpy as np
import pytest
from PIL import Image

import process_decoding
from models.bitstream import read_sem, write_sem
from models.decode.job import MANIFEST_FILE
from models.palettes import label_map_from_pil
from models.semantic_code import SemanticCode
from tests.conftest import VOC_MASKS
from tests.decode_fixtures import trained_controlnet  # noqa: F401


def decode(config, checkpoint, input_dir, output_dir, *extra):
    return process_decoding.main(["--config_path", str(config), "--checkpoint_path", str(checkpoint),
                                  "--input_path", str(input_dir), "--output_dir", str(output_dir),
                                  "--num_inference_steps", "2", "--device", "cpu", *map(str, extra)])


@pytest.fixture
def sem_folder(tmp_path):
    """Three VOC masks as .sem files (one compact, with a stored seed), two with a PNG twin."""
    folder = tmp_path / "codes"
    (folder / "sub").mkdir(parents=True)
    masks = sorted(VOC_MASKS.glob("*.png"))[:3]
    for index, mask in enumerate(masks):
        label_map = label_map_from_pil(Image.open(mask))
        label_map[label_map == 255] = 0
        relpath = ("sub/" if index == 2 else "") + mask.stem
        code = SemanticCode(label_map, f"a photo number {index}", seed=1234 if index == 1 else None)
        write_sem(folder / f"{relpath}.sem", code, grid=64 if index == 1 else None)
        if index < 2:  # the training-layout PNG next to it: the .sem must win
            Image.open(mask).save(folder / f"{relpath}.png")
    return folder, masks


def test_sem_files_are_decoded_with_their_captions_seeds_and_sizes(tiny_config, trained_controlnet,  # noqa: F811
                                                                   sem_folder, tmp_path, capsys):
    folder, masks = sem_folder
    assert decode(tiny_config, trained_controlnet, folder, tmp_path / "out") == 0
    captured = capsys.readouterr()
    assert "2 label-map image(s) have a .sem file of the same name" in captured.err
    assert "decoded 3," in captured.out
    manifest = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())["images"]
    assert sorted(manifest) == sorted([f"{masks[0].stem}.png", f"{masks[1].stem}.png", f"sub/{masks[2].stem}.png"])
    for output, record in manifest.items():
        assert record["input"].endswith(".sem")
        code = read_sem(folder / record["input"])
        assert record["caption"] == code.caption
        assert Image.open(tmp_path / "out" / output).size == (code.width, code.height)
    assert manifest[f"{masks[1].stem}.png"]["seed"] == 1234  # stored in the file
    assert manifest[f"{masks[0].stem}.png"]["seed"] != 1234


def test_a_corrupt_sem_file_is_one_line_and_the_rest_decoded(tiny_config, trained_controlnet,  # noqa: F811
                                                             sem_folder, tmp_path, capsys):
    folder, masks = sem_folder
    data = bytearray((folder / f"{masks[0].stem}.sem").read_bytes())
    data[len(data) // 2] ^= 0x40
    (folder / f"{masks[0].stem}.sem").write_bytes(bytes(data))
    assert decode(tiny_config, trained_controlnet, folder, tmp_path / "out") == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {masks[0].stem}.sem: ")
    assert "Traceback" not in captured.err
    assert "decoded 2," in captured.out
    assert np.array(Image.open(tmp_path / "out" / f"sub/{masks[2].stem}.png")).ndim == 3
