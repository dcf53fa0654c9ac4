"""Config flags: typed values from the config's own fields, set between the file and --override."""

import argparse

import pytest

from models.cli import add_config_arguments, config_flag, config_from_args
from models.config import ConfigError


def parser_with_flags() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    config_flag(parser, "--seed", "decode.seed", "base seed")
    config_flag(parser, "--scheduler", "decode.scheduler", "sampler")
    config_flag(parser, "--resolution", "decode.resolution", "generation size")
    config_flag(parser, "--keep_aspect", "decode.keep_aspect", "keep the aspect ratio")
    config_flag(parser, "--use_fp16", "decode.precision", "half precision", const="16")
    config_flag(parser, "--segmentation_ckpt", "segmentation.checkpoint", "checkpoint")
    return parser


def test_the_file_then_the_flags_then_the_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("decode:\n  seed: 1\n  guidance_scale: 2.0\n")
    parser = parser_with_flags()
    config = config_from_args(parser.parse_args(["--config_path", str(tmp_path / "c.yaml")]))
    assert (config.decode.seed, config.decode.guidance_scale) == (1, 2.0)  # absent flags leave the file alone
    config = config_from_args(parser.parse_args(["--config_path", str(tmp_path / "c.yaml"), "--seed", "5"]))
    assert config.decode.seed == 5
    config = config_from_args(parser.parse_args(["--config_path", str(tmp_path / "c.yaml"), "--seed", "5",
                                                 "--override", "decode.seed=9"]))
    assert config.decode.seed == 9


def test_types_switches_and_constants_come_from_the_config():
    parser = parser_with_flags()
    config = config_from_args(parser.parse_args(["--resolution", "256", "--no-keep_aspect", "--use_fp16"]))
    assert config.decode.resolution == 256 and config.decode.keep_aspect is False
    assert config.decode.precision == "16"
    assert config_from_args(parser.parse_args(["--keep_aspect"])).decode.keep_aspect is True
    for wrong in (["--scheduler", "ddpm"], ["--seed", "three"]):
        with pytest.raises(SystemExit):  # argparse refuses what the config would refuse
            parser.parse_args(wrong)
    assert "{unipc,ddim,dpmpp,euler}" in parser.format_help()


def test_a_path_flag_arrives_as_written_and_absolute_when_it_exists(tmp_path, monkeypatch):
    odd = tmp_path / "a #1 'b' c=d: é.pth"
    odd.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    parser = parser_with_flags()
    assert config_from_args(parser.parse_args(["--segmentation_ckpt", odd.name])).segmentation.checkpoint == str(odd)
    missing = "org/model #2"  # a hub id or a missing file: kept as written for the loader to report
    assert config_from_args(parser.parse_args(["--segmentation_ckpt", missing])).segmentation.checkpoint == missing


def test_a_flag_for_an_unknown_key_is_a_programming_error():
    with pytest.raises(ConfigError, match="did you mean 'seed'"):
        config_flag(argparse.ArgumentParser(), "--sead", "decode.sead", "typo")
