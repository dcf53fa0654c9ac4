from pathlib import Path

import pytest

from models.config import (DEFAULT_CONFIG_PATH, Config, ConfigError, apply_overrides, config_from_dict, load_config,
                           save_config)


def test_default_config_file_is_valid_and_complete():
    config = load_config(DEFAULT_CONFIG_PATH)
    assert config.segmentation.encoder_name == "resnet101"
    assert config.segmentation.output_stride == 16
    assert config.captioning.model == "Salesforce/blip-image-captioning-large"  # hub id kept
    assert config.segmentation.checkpoint.endswith("best_deeplabv3plus_resnet101_voc_os16.pth")


def test_missing_keys_keep_defaults_and_types_are_checked():
    config = config_from_dict({"captioning": {"num_beams": 1}})
    assert config.captioning.num_beams == 1
    assert config.captioning.max_length == Config().captioning.max_length
    with pytest.raises(ConfigError, match="did you mean 'num_beams'"):
        config_from_dict({"captioning": {"num_beam": 1}})
    with pytest.raises(ConfigError, match="must be int"):
        config_from_dict({"captioning": {"num_beams": "3"}})
    with pytest.raises(ConfigError, match="one of"):
        config_from_dict({"segmentation": {"output_stride": 32}})
    with pytest.raises(ConfigError, match="unknown section"):
        config_from_dict({"segmentaton": {}})


def test_float_fields_accept_exponents_without_a_dot(tmp_path: Path):
    # YAML 1.1 (PyYAML) reads 1e-5 as a string; a float field takes it as the number.
    config = apply_overrides(Config(), ["train.learning_rate=1e-5"])
    assert config.train.learning_rate == 1e-5
    (tmp_path / "c.yaml").write_text("train:\n  learning_rate: 3e-4\n")
    assert load_config(tmp_path / "c.yaml").train.learning_rate == 3e-4
    with pytest.raises(ConfigError, match="must be float"):
        apply_overrides(Config(), ["train.learning_rate=fast"])


def test_overrides_parse_yaml_values():
    config = apply_overrides(Config(), ["segmentation.output_stride=8", "captioning.prefix=a photo of",
                                        "diffusion.controlnet_path=null"])
    assert config.segmentation.output_stride == 8
    assert config.captioning.prefix == "a photo of"
    assert config.diffusion.controlnet_path is None
    with pytest.raises(ConfigError):
        apply_overrides(Config(), ["output_stride=8"])


def test_relative_paths_resolve_next_to_the_config(tmp_path: Path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "seg.pth").write_bytes(b"x")
    (tmp_path / "c.yaml").write_text("segmentation:\n  checkpoint: weights/seg.pth\n"
                                     "captioning:\n  model: someone/some-blip\n")
    config = load_config(tmp_path / "c.yaml")
    assert config.segmentation.checkpoint == str((tmp_path / "weights" / "seg.pth").resolve())
    assert config.captioning.model == "someone/some-blip"


def test_save_and_load_round_trip(tmp_path: Path):
    config = apply_overrides(Config(), ["encode.batch_size=3"])
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").encode.batch_size == 3


def test_invalid_yaml_is_reported(tmp_path: Path):
    (tmp_path / "bad.yaml").write_text("segmentation: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
