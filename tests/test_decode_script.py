"""process_decoding.py end to end with the tiny components: processes, resuming, bad inputs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import process_decoding
from models.decode.job import MANIFEST_FILE
from tests.conftest import REPO, run_script
from tests.decode_fixtures import label_maps, trained_controlnet  # noqa: F401


def decode_args(config, checkpoint, input_dir, output_dir, *extra):
    return ["--config_path", str(config), "--checkpoint_path", str(checkpoint), "--input_path", str(input_dir),
            "--output_dir", str(output_dir), "--num_inference_steps", "2", "--batch_size", "2",
            *map(str, extra)]


def outputs(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


@pytest.fixture
def one_thread():
    """One intra-op thread, as each of two processes gets on two cores (results depend on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def decoded(tiny_config, trained_controlnet, label_maps, tmp_path_factory):  # noqa: F811
    """The six label maps decoded by one process with one thread."""
    output_dir = tmp_path_factory.mktemp("decoded") / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        status = process_decoding.main(decode_args(tiny_config, trained_controlnet, label_maps, output_dir,
                                                   "--device", "cpu"))
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    return output_dir


def test_one_and_two_processes_write_identical_images_at_the_original_sizes(
        decoded, tiny_config, trained_controlnet, label_maps, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = run_script("process_decoding.py", *decode_args(tiny_config, trained_controlnet, label_maps,
                                                            tmp_path / "two", "--accelerator", "cpu",
                                                            "--devices", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "decoded 6, already done 0, failed 0" in result.stdout
    one, two = outputs(decoded), outputs(tmp_path / "two")
    inputs = sorted(p.relative_to(label_maps).as_posix() for p in label_maps.rglob("*.png"))
    assert sorted(one) == sorted(two) == inputs  # each exactly once, same relative paths
    assert all(one[name] == two[name] for name in one)  # byte-identical
    for name in inputs:
        assert Image.open(decoded / name).size == Image.open(label_maps / name).size
    manifests = [json.loads((folder / MANIFEST_FILE).read_text()) for folder in (decoded, tmp_path / "two")]
    assert manifests[0]["images"] == manifests[1]["images"] and len(manifests[0]["images"]) == 6
    assert manifests[0]["settings"] == manifests[1]["settings"]
    assert not list((tmp_path / "two").glob(".manifest.rank*"))


def finished(output_dir):
    """Outputs an interrupted run recorded as finished (a record and the file)."""
    done = set()
    for partial in output_dir.glob(".manifest.rank*.jsonl"):
        for line in partial.read_text().splitlines():
            try:
                done.add(json.loads(line)["output"])
            except (json.JSONDecodeError, KeyError):
                continue
    return {name for name in done if (output_dir / name).is_file()}


def test_a_killed_run_resumes_without_redoing_or_missing_images(
        decoded, tiny_config, trained_controlnet, label_maps, tmp_path, one_thread, capsys):  # noqa: F811
    output_dir = tmp_path / "out"
    args = decode_args(tiny_config, trained_controlnet, label_maps, output_dir, "--device", "cpu")
    process = subprocess.Popen([sys.executable, str(REPO / "process_decoding.py"), *args], cwd=REPO,
                               env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while process.poll() is None and not finished(output_dir) and time.time() < deadline:
        time.sleep(0.02)  # until the first batch is recorded
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = finished(output_dir)
    assert 0 < len(done) < 6, "the run should have been killed part-way"
    before = {name: (output_dir / name).stat().st_mtime_ns for name in done}
    with open(next(output_dir.glob(".manifest.rank*.jsonl")), "a") as partial:
        partial.write('{"output": "cut sh')  # a record cut short by the kill
    assert process_decoding.main(args + ["--skip_existing"]) == 0
    assert f"decoded {6 - len(done)}, already done {len(done)}, failed 0" in capsys.readouterr().out
    assert before == {name: (output_dir / name).stat().st_mtime_ns for name in done}  # not redone
    assert outputs(output_dir) == outputs(decoded)  # none missing, and as an uninterrupted run
    manifest = json.loads((output_dir / MANIFEST_FILE).read_text())
    assert manifest["images"] == json.loads((decoded / MANIFEST_FILE).read_text())["images"]
    assert not list(output_dir.glob(".manifest.rank*"))
    assert process_decoding.main(args + ["--skip_existing", "--seed", "1"]) == 2
    assert "other settings (seed differ)" in capsys.readouterr().err


@pytest.fixture
def mixed_inputs(label_maps, tmp_path):  # noqa: F811
    """One good label map and one of each kind of bad input."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted(label_maps.glob("*.png"))[0]
    shutil.copy(good, folder / "good.png")
    shutil.copy(good, folder / "uncaptioned.png")
    Image.fromarray(np.full((20, 30), 30, dtype=np.uint8), mode="L").save(folder / "ids.png")
    Image.new("RGB", (20, 30), (128, 0, 0)).save(folder / "colour.png")
    (folder / "truncated.png").write_bytes(good.read_bytes()[:300])
    (folder / "notes.txt").write_text("not a label map")
    captions = {name: "a dog" for name in ("good.jpg", "ids.jpg", "colour.jpg", "truncated.jpg")}
    (folder / "prompts.json").write_text(json.dumps(captions))
    return folder


def test_bad_inputs_are_reported_one_line_each_and_the_rest_decoded(
        tiny_config, trained_controlnet, mixed_inputs, tmp_path, capsys):  # noqa: F811
    args = decode_args(tiny_config, trained_controlnet, mixed_inputs, tmp_path / "out", "--device", "cpu")
    assert process_decoding.main(args + ["--use_fp16"]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    expected = {"ids.png": "class ids 30 outside 0..20", "colour.png": "must be a palette or gray PNG",
                "truncated.png": "unreadable label map", "uncaptioned.png": "no caption for it"}
    assert len(errors) == len(expected)
    for name, reason in expected.items():
        assert any(line.startswith(f"error: {name}: ") and reason in line for line in errors)
    assert "skipped: notes.txt: not a label map" in captured.err
    assert "precision 16 is ignored on the CPU" in captured.err
    assert "decoded 1, already done 0, failed 4, ignored 1" in captured.out
    assert sorted(outputs(tmp_path / "out")) == ["good.png"]
    assert process_decoding.main(args + ["--override", "decode.missing_caption=empty", "--skip_existing"]) == 1
    captured = capsys.readouterr()
    assert "warning: uncaptioned.png: no caption in the prompts file; decoded with an empty caption" in captured.err
    assert "decoded 1, already done 1, failed 3" in captured.out


def test_unusable_folders_and_prompts_are_refused_before_any_work(
        tiny_config, trained_controlnet, label_maps, tmp_path, capsys):  # noqa: F811
    inside = decode_args(tiny_config, trained_controlnet, label_maps, label_maps / "out")
    assert process_decoding.main(inside) == 2
    assert "is inside --input_path" in capsys.readouterr().err
    (tmp_path / "maps").mkdir()
    shutil.copy(sorted(label_maps.glob("*.png"))[0], tmp_path / "maps" / "a.png")
    assert process_decoding.main(decode_args(tiny_config, trained_controlnet, tmp_path / "maps", tmp_path / "o")) == 2
    assert "prompts file not found" in capsys.readouterr().err
    assert not (label_maps / "out").exists() and not (tmp_path / "o").exists()


def test_a_partial_record_file_vanishing_mid_read_is_read_again(tmp_path, monkeypatch):
    """Rank 0 folds partial records into the manifest while another process reads them."""
    from models.decode import job as decode_job

    (tmp_path / ".manifest.rank0.jsonl").write_text(json.dumps({"output": "a.png", "seed": 1}) + "\n")
    original, calls = decode_job.Path.read_text, []

    def fold_then_read(path, *args, **kwargs):
        if path.name.startswith(".manifest.rank") and not calls:  # rank 0 wins the race once
            calls.append(path)
            decode_job.write_manifest(tmp_path, {"s": 1}, {"a.png": {"seed": 1}})
            raise FileNotFoundError(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(decode_job.Path, "read_text", fold_then_read)
    manifest = decode_job.read_manifest(tmp_path)
    assert calls and manifest["images"] == {"a.png": {"seed": 1}}


def test_a_half_precision_batch_that_overflows_is_redone_in_float32(tiny_config, trained_controlnet,  # noqa: F811
                                                                      label_maps, tmp_path):  # noqa: F811
    """The VAE made to overflow in bfloat16 (as SD's VAE can in float16): the batch is decoded again
    in float32, its images are finite and close to a float32 run, and the manifest says so."""
    from models.config import load_config
    from models.decode.decoder import ControlNetDecoder
    from models.decode.job import plan_decode, prepare_output, read_manifest, run_decode, run_settings
    from models.layout import CaptionIndex, read_prompts
    from models.runtime import DeviceSpec

    config = load_config(tiny_config, [f"diffusion.controlnet_path={trained_controlnet}", "decode.batch_size=2",
                                       "decode.num_inference_steps=2"])
    captions = CaptionIndex(read_prompts(label_maps / "prompts.json"))
    reference_dir, output_dir = tmp_path / "float32", tmp_path / "bf16"
    for precision, folder in (("32", reference_dir), ("bf16", output_dir)):
        decoder = ControlNetDecoder.from_config(config)

        def overflow(module, inputs, output):
            return output * float("nan") if output.dtype == torch.bfloat16 else output

        decoder.pipeline.vae.decoder.register_forward_hook(overflow)
        plan = plan_decode(label_maps, captions, decoder, config, skip_files=((label_maps / "prompts.json"),))
        settings = run_settings(decoder, config, precision)
        plan.done = prepare_output(folder, settings, False, True)
        result = run_decode(plan, decoder, DeviceSpec("cpu", 1), folder, settings, progress_bar=False)
        assert result.failures == {} and result.written == 6
    entries = read_manifest(output_dir)["images"]
    assert len(entries) == 6 and all(entry["redone_in_float32"] for entry in entries.values())
    assert not any("redone_in_float32" in entry for entry in read_manifest(reference_dir)["images"].values())
    for name, data in outputs(output_dir).items():
        redone = np.asarray(Image.open(output_dir / name), dtype=np.int16)
        reference = np.asarray(Image.open(reference_dir / name), dtype=np.int16)
        assert np.abs(redone - reference).mean() < 8  # the bfloat16-rounded weights, widened: close, not equal
        assert redone.std() > 1  # an image, not the zeros NaN turns into
