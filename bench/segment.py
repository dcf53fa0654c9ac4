"""Peak memory and time of segmenting large photos: our bounded inference against full-size inference.

    python bench/segment.py                      # 4 photos of 4000x3000, both encoder families
    python bench/segment.py --size 2000x1500 --batch 2

The networks are the real architectures with random weights (no downloads): DeepLabV3+ ResNet-101
(the original project's network) and UperNet ConvNeXt-small with 150 ADE20K classes (the
architecture of openmmlab/upernet-convnext-small). Each case runs in its own process on the CPU
and reports its peak resident memory (``ru_maxrss``, which includes about 0.6 GB of libraries)
and its time; label maps always come out at the photo's full size.

- ``ours``: ``models.encode`` at a bounded inference size (short side 513 for DeepLabV3+, the
  processor's 512 for UperNet), logits resized back and labelled in strips of rows.
- ``full size``: the reference behaviours. DeepLabV3+ on the whole photo, as the original project
  (and this project before ``segmentation.inference_size``) ran it. For UperNet, transformers'
  own recipe: the processor's fixed 512x512 resize, then ``post_process_semantic_segmentation``
  with the photo's size, which upsamples all 150 logit maps at once.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CASES = ("deeplab-ours", "deeplab-full", "upernet-ours", "upernet-full")
DEEPLAB_INFERENCE_SIZE = 513  # the crop size the original checkpoint was trained at


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", default="4000x3000", help="photo width x height")
    parser.add_argument("--batch", type=int, default=4, help="photos per call")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--full_size_limit", type=int, default=4_000_000,
                        help="skip DeepLabV3+ at full size above this many pixels per photo (it needs tens "
                             "of GB at 12 MP); it is then measured at a quarter of the area")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # one case, in a child process
    return parser.parse_args(argv)


def photos(width: int, height: int, batch: int) -> list[np.ndarray]:
    """Smooth random RGB photos (a low-resolution pattern enlarged, so the networks see regions)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    small = [rng.integers(0, 256, (12, 16, 3), dtype=np.uint8) for _ in range(batch)]
    return [np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)) for image in small]


def deeplab(full_size: bool) -> torch.nn.Module:
    from models.config import SegmentationConfig
    from models.encode.segmentation import DeepLabV3Plus

    model = DeepLabV3Plus.from_config(SegmentationConfig()).eval()
    model.inference_size = None if full_size else DEEPLAB_INFERENCE_SIZE
    return model


def upernet() -> tuple[torch.nn.Module, object]:
    from transformers import ConvNextConfig, SegformerImageProcessor, UperNetConfig, UperNetForSemanticSegmentation

    from models.palettes import ADE20K_CLASSES

    backbone = ConvNextConfig(depths=[3, 3, 27, 3], hidden_sizes=[96, 192, 384, 768],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, hidden_size=512, auxiliary_in_channels=384,
                           num_labels=len(ADE20K_CLASSES), id2label=dict(enumerate(ADE20K_CLASSES)))
    return UperNetForSemanticSegmentation(config).eval(), SegformerImageProcessor(size={"height": 512, "width": 512})


@torch.inference_mode()
def run_case(case: str, images: list[np.ndarray]) -> list[tuple[int, ...]]:
    """Segment ``images`` as ``case`` says; the label maps' shapes."""
    if case.startswith("deeplab"):
        return [m.shape for m in deeplab(case.endswith("full")).predict(images)]
    model, processor = upernet()
    if case == "upernet-ours":
        from models.encode.transformers_segmenter import TransformersSegmenter
        from models.palettes import ADE20K

        return [m.shape for m in TransformersSegmenter(model, processor, ADE20K, 1, 512).predict(images)]
    inputs = processor(images=images, return_tensors="pt")  # the processor's own 512x512 resize
    outputs = model(pixel_values=inputs.pixel_values)
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[i.shape[:2] for i in images])
    return [tuple(m.shape) for m in maps]


def child(args: argparse.Namespace) -> None:
    """Run one case in this process and print its JSON line."""
    torch.set_num_threads(2)
    width, height = (int(side) for side in args.size.split("x"))
    images = photos(width, height, args.batch)
    start = time.perf_counter()
    shapes = run_case(args.case, images)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MiB
    print(json.dumps({"case": args.case, "size": args.size, "batch": args.batch, "peak_mib": round(peak),
                      "seconds": round(seconds, 1), "shapes": [list(s) for s in shapes]}))


def measure(case: str, size: str, batch: int) -> dict:
    command = [sys.executable, __file__, "--case", case, "--size", size, "--batch", str(batch)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        killed = result.returncode in (-9, 137)  # the kernel's out-of-memory killer
        reason = "killed (out of memory)" if killed else f"exit status {result.returncode}"
        return {"case": case, "size": size, "batch": batch, "error": reason}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.case:
        child(args)
        return 0
    width, height = (int(side) for side in args.size.split("x"))
    rows = []
    for case in args.cases:
        size = args.size
        if case == "deeplab-full" and width * height > args.full_size_limit:
            size = f"{width // 2}x{height // 2}"  # a quarter of the area: the full photo does not fit
        rows.append(measure(case, size, args.batch))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| case | photos | peak memory (MiB) | seconds | label maps |\n|---|---|---:|---:|---|")
    for row in rows:
        if "error" in row:
            shapes = "error: " + row["error"]
        else:
            height, width = row["shapes"][0]
            shapes = f"{width}x{height} (x{len(row['shapes'])})"
        print(f"| {row['case']} | {row['batch']} x {row['size']} | {row.get('peak_mib', '-')} | "
              f"{row.get('seconds', '-')} | {shapes} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
