"""Every top-level script answers --help and lists the original project's flags."""

import pytest

from tests.conftest import run_script

SCRIPTS = ["process_input.py", "train.py", "process_decoding.py", "compress_images.py", "evaluate.py"]
README_FLAGS = {
    "process_input.py": ["--input_dir", "--output_dir", "--segmentation_ckpt", "--config_path", "--gpus"],
    "train.py": ["--config_path", "--sd_model_path", "--gpus", "--batch_size_per_gpu"],
    "process_decoding.py": ["--config_path", "--checkpoint_path", "--input_path", "--output_dir",
                            "--prompt_json_path", "--gpu_ids", "--use_fp16"],
    "compress_images.py": ["--input-dir", "--output-dir", "--target-size"],
    "evaluate.py": ["--prediction_path", "--ground_truth_path"],
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_the_original_flags(script):
    result = run_script(script, "--help")
    assert result.returncode == 0
    for flag in README_FLAGS[script]:
        assert flag in result.stdout
