#!/usr/bin/env bash
# Download the wheels bench/gpu.py needs that the GPU machines' image lacks, into .whl/ (ignored by
# git), for that image's Python 3.12 on manylinux x86_64. Run it here, where pip reaches the
# registry; the device run carries .whl and installs from it without a network (docs/benchmarks.md).
#
# The image already has torch 2.11, transformers 5.17, pytorch-lightning 2.6.6, huggingface-hub
# 1.33, safetensors 0.8, timm, torchvision, torchmetrics, numpy, Pillow, PyYAML and tensorboard
# (/work/.library/device/KINDS.md). All three wheels below are pure Python and installed with
# --no-deps: diffusers' own needs are in the image (huggingface-hub>=1.32, safetensors>=0.8;
# importlib_metadata only below Python 3.8), and so are segmentation-models-pytorch's.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
    diffusers==0.42.1                   # the version the tests run with
    segmentation-models-pytorch==0.6.0  # models.encode.segmentation: DeepLabV3+ encoder and ASPP
    open-clip-torch==3.3.0              # only its CLIP BPE vocabulary file (models.decode.stable_diffusion), never imported
)

rm -rf .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any --dest .whl "${WHEELS[@]}"
ls -l .whl
du -sh .whl
