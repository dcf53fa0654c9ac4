"""The quickstart demo: the whole chain on images it has never seen, and a report folder.

    python -m models.quickstart.demo [--output_dir reports/quickstart]

With the default config (``configs/shapes.yaml``: the small models shipped in
``checkpoints/shapes/``) it generates held-out shapes images, then runs the five scripts as a
user would: ``process_input.py`` (label maps and captions into ``.sem`` files),
``process_decoding.py`` (images back from the ``.sem`` files), ``compress_images.py`` (classic
codecs at the byte size of each ``.sem`` file) and ``evaluate.py`` (PSNR, SSIM, LPIPS where its
weights are on the machine, semantic consistency, bits per pixel, rate-distortion plot). Our
rate-distortion curve has a point per ``--budgets`` byte budget besides the lossless one: the
``.sem`` files re-coded within that many bytes each (rate control, ``models.bitstream.encode_within``:
what ``process_input.py --target_bytes N`` writes for the same images), decoded, and given to the
codecs as their budgets too. It writes:

    originals/            the input images (shapes: generated; ground-truth label maps in truth_maps/)
    semantic/             one .sem file per image: label map + caption, the rate we report
    reconstructions/      decoded from the .sem files (manifest.json: seeds and settings)
    baselines/            <codec>/ files at the same byte sizes, <codec>_decoded/, results.csv
    rate_control/<N>B/    semantic/, reconstructions/ and baselines/ at a budget of N bytes per file
    evaluation/           evaluate.py's folders, summary.json and plots
    grid.png              original | transmitted label map | ours | each codec, per image
    rate_distortion.png   quality against bits per pixel for every method
    metrics.md            the tables: bits per pixel, PSNR, SSIM, semantic mIoU per method; each budget
    report.md             what was run, the table, the pictures, and how to read them

``--config_path configs/config.yaml --input_dir PHOTOS`` runs the real system on your photographs
through the same code (its weights must be present: see checkpoints/README.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from models.baselines.codecs import CODECS
from models.config import PROJECT_ROOT, Config, ConfigError, load_config
from models.evaluation import METRIC_NAMES
from models.imageio import thumbnail
from models.layout import IMAGE_OUTPUT_SUFFIX, SEM_SUFFIX, find_label_set, index_by_stem, output_relpath
from models.quickstart.model_folder import SHAPES_CONFIG
from models.quickstart.shapes import HELD_OUT_SPLIT, held_out_samples, write_samples

# MS-SSIM needs sides > 160 px; LPIPS is reported as unavailable unless its AlexNet weights are on the machine
METRICS = ("psnr", "ssim", "lpips", "semantic")
BUDGETS = (44, 50, 56, 64)  # bytes per .sem file: from coarse grids to mostly lossless on 64x64 shapes images
RATE_CONTROL = "rate_control"  # the folder of the budget points
MARKER = ".demo-report"  # marks a folder the demo may empty and rewrite
GRID_CELL = 128  # pixels per grid cell (shapes images are upscaled without smoothing)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.quickstart.demo",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", default="reports/quickstart", help="the report folder")
    parser.add_argument("--config_path", default=str(SHAPES_CONFIG),
                        help="configs/shapes.yaml: the shipped small models; configs/config.yaml: the real ones")
    parser.add_argument("--input_dir", default=None,
                        help="your own images (default: freshly generated held-out shapes images)")
    parser.add_argument("--num_images", type=int, default=8, help="shapes images to generate")
    parser.add_argument("--seed", type=int, default=0, help="data-set seed of the generated images")
    parser.add_argument("--codecs", nargs="+", choices=CODECS, default=list(CODECS), help="baseline codecs")
    parser.add_argument("--metrics", nargs="+", choices=METRIC_NAMES, default=list(METRICS),
                        help="evaluate.py --metrics")
    parser.add_argument("--grid_images", type=int, default=6, help="rows of the grid")
    parser.add_argument("--budgets", type=int, nargs="*", default=list(BUDGETS),
                        help="byte budgets per .sem file: one point each on our rate-distortion curve, beside "
                             "the lossless point (none: the lossless point alone)")
    return parser.parse_args(argv)


# --- inputs -------------------------------------------------------------------------------------

def missing_weights(config: Config) -> list[str]:
    """The configured models that are neither local files nor in the Hugging Face cache."""
    needs = [("segmentation.checkpoint", config.segmentation.checkpoint, None),
             ("captioning.model", config.captioning.model, "config.json"),
             ("diffusion.sd_model_path", config.diffusion.sd_model_path, "model_index.json"),
             ("diffusion.controlnet_path", config.diffusion.controlnet_path, "config.json")]
    return [f"{key} ({value or 'not set'})" for key, value, marker in needs if not _available(value, marker)]


def _available(value: str | None, marker: str | None) -> bool:
    """A local path, or a hub id whose ``marker`` file is cached (nothing is downloaded)."""
    if not value:
        return False
    if Path(value).exists():
        return True
    if marker is None or value.startswith((".", "/")) or value.count("/") != 1:
        return False
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(value, marker), str)


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies below it."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def clear_report_folder(output_dir: Path) -> None:
    """Empty a previous demo report (recognised by its marker file); refuse any other folder."""
    if output_dir.exists() and any(output_dir.iterdir()):
        if not (output_dir / MARKER).is_file():
            raise ValueError(f"--output_dir {output_dir} is not empty and holds no demo report; "
                             f"choose a new or empty folder")
        shutil.rmtree(output_dir)  # a report describes one run
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / MARKER).write_text("a report folder of python -m models.quickstart.demo\n", encoding="utf-8")


def write_shapes_inputs(output_dir: Path, count: int, seed: int) -> dict[str, str]:
    """Held-out shapes images in ``originals/``, their exact maps in ``truth_maps/``; captions."""
    return write_samples(held_out_samples(count, seed), output_dir / "originals", output_dir / "truth_maps")


# --- the chain ------------------------------------------------------------------------------------

def budget_folder(output_dir: Path, budget: int) -> Path:
    """Where the point of ``budget`` bytes per file lives: semantic/, reconstructions/, baselines/."""
    return output_dir / RATE_CONTROL / f"{budget}B"


def recode_at_budgets(output_dir: Path, budgets: list[int]) -> dict[int, list]:
    """Every ``.sem`` file of ``semantic/`` re-coded within each budget (the finest file that fits;
    ``models.bitstream.rate_control``) into ``rate_control/<N>B/semantic/``; the files chosen
    (``Fitted``) per budget. A file over budget even at the coarsest grid is kept there, as
    ``process_input.py --target_bytes`` keeps it."""
    from models.bitstream import RateSearch, read_sem
    from models.imageio import atomic_write_bytes
    from models.layout import LABEL_SET_FILE

    semantic = output_dir / "semantic"
    searches = {path.relative_to(semantic): RateSearch(read_sem(path)) for path in sorted(semantic.rglob("*.sem"))}
    chosen = {}
    for budget in budgets:
        folder = budget_folder(output_dir, budget) / "semantic"
        chosen[budget] = []
        for relpath, search in searches.items():
            fitted = search.fit(budget)
            atomic_write_bytes(folder / relpath, fitted.data)
            chosen[budget].append(fitted)
        if (semantic / LABEL_SET_FILE).is_file():
            shutil.copyfile(semantic / LABEL_SET_FILE, folder / LABEL_SET_FILE)
    return chosen


def _run_step(name: str, script_main, arguments: list, seconds: dict[str, float]) -> None:
    """Run one script's ``main``; its seconds are added to ``seconds[name]``. ``RuntimeError`` if it fails."""
    print(f"\n== {name}: {script_main.__module__}.py", flush=True)
    start = time.perf_counter()
    status = script_main([str(argument) for argument in arguments])
    seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - start, 1)
    if status != 0:
        raise RuntimeError(f"{script_main.__module__}.py stopped with exit status {status} (see above)")


def run_chain(originals: Path, output_dir: Path, config_path: str, codecs: list[str],
              metrics: list[str], budgets: list[int] = ()) -> dict[str, float]:
    """The four scripts in order, the later ones at every point (lossless, then each budget); seconds
    per step. Raises ``RuntimeError`` when one fails."""
    import compress_images
    import evaluate
    import process_decoding
    import process_input

    seconds: dict[str, float] = {}
    _run_step("encode", process_input.main, ["--input_dir", originals, "--output_dir", output_dir / "semantic",
                                             "--format", "sem", "--config_path", config_path], seconds)
    if budgets:
        start = time.perf_counter()
        recode_at_budgets(output_dir, list(budgets))
        seconds["rate control"] = round(time.perf_counter() - start, 1)
    points = [output_dir] + [budget_folder(output_dir, budget) for budget in budgets]
    for point in points:
        _run_step("decode", process_decoding.main, ["--input_path", point / "semantic", "--output_dir",
                                                    point / "reconstructions", "--config_path", config_path], seconds)
    for point in points:
        _run_step("baselines", compress_images.main, [
            "--input-dir", originals, "--output-dir", point / "baselines", "--match-sizes-from", point / "semantic",
            "--allow-downscale", "--codecs", *codecs], seconds)
    methods = [method for point in points for method in point_methods(point, codecs)]
    _run_step("evaluate", evaluate.main, [
        "--ground_truth_path", originals, "--label_path", output_dir / "semantic", "--output_dir",
        output_dir / "evaluation", "--config_path", config_path, "--metrics", *metrics, "--grid_images", "0",
        *[part for method in methods for part in ("--method", method)]], seconds)
    return seconds


def point_methods(point: Path, codecs: list[str]) -> list[str]:
    """``evaluate.py --method`` of ours and each codec at one point (its folder)."""
    semantic, decoded, baselines = point / "semantic", point / "reconstructions", point / "baselines"
    return [f"ours={decoded},{semantic}"] + [f"{c}={baselines / (c + '_decoded')},{baselines / c}" for c in codecs]


# --- the report -----------------------------------------------------------------------------------

def method_rows(output_dir: Path) -> list[dict]:
    """One row per run from evaluate.py's summary (ours and each codec at the lossless point, then
    at each budget): its method, folder and mean metrics."""
    summary = json.loads((output_dir / "evaluation" / "summary.json").read_text(encoding="utf-8"))
    return [{"method": run["method"], "folder": run["folder"], **run["metrics"]} for run in summary["runs"]]


def fit_counts(output_dir: Path) -> dict[str, str]:
    """Per codec, how many images fit the byte budget ("6/8") at one point (the report folder or
    a budget's folder under ``rate_control/``), from compress_images' results.csv."""
    import csv

    with open(output_dir / "baselines" / "results.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    counts = {}
    for codec in dict.fromkeys(row["codec"] for row in rows):
        mine = [row for row in rows if row["codec"] == codec]
        counts[codec] = f"{sum(row['fits'] == 'true' for row in mine)}/{len(mine)}"
    return counts


def metrics_table(rows: list[dict], fits: dict[str, str]) -> str:
    """A Markdown table: bits per pixel, bytes, PSNR, SSIM, semantic mIoU, budget fits."""
    columns = [("bpp", "bits/pixel"), ("psnr", "PSNR dB"), ("ssim", "SSIM"), ("ms_ssim", "MS-SSIM"),
               ("lpips", "LPIPS"), ("sem_miou", "semantic mIoU"), ("sem_pixel_accuracy", "semantic pixel acc.")]
    shown = [(key, title) for key, title in columns if any(row.get(key) is not None for row in rows)]
    lines = ["| method | " + " | ".join(title for _, title in shown) + " | fits the byte budget |",
             "|---" * (len(shown) + 2) + "|"]
    for row in rows:
        cells = ["-" if row.get(key) is None else f"{row[key]:.3f}" for key, _ in shown]
        fit = "(the budget)" if row["method"] == "ours" else fits.get(row["method"], "-")
        lines.append(f"| {row['method']} | " + " | ".join(cells) + f" | {fit} |")
    return "\n".join(lines)


def rate_distortion_table(output_dir: Path, rows: list[dict], codecs: list[str], budgets: list[int]) -> str:
    """A Markdown table with a row per point of our curve: bytes per file, how the maps were coded,
    our PSNR, LPIPS and semantic mIoU, and each codec's semantic mIoU at the same bytes (fits)."""
    per_point = len(codecs) + 1
    ours_columns = [(key, title) for key, title in (("psnr", "PSNR dB"), ("lpips", "LPIPS"), ("sem_miou", "mIoU"))
                    if any(row.get(key) is not None for row in rows)]
    lines = ["| budget per file | bytes per file | bits/pixel | coded as | "
             + " | ".join(f"ours {title}" for _, title in ours_columns)
             + "".join(f" | {codec} mIoU (fits)" for codec in codecs) + " |",
             "|---" * (4 + len(ours_columns) + len(codecs)) + "|"]
    for index, budget in enumerate([None, *budgets]):
        point_rows = rows[index * per_point:(index + 1) * per_point]
        point = output_dir if budget is None else budget_folder(output_dir, budget)
        sizes = [path.stat().st_size for path in (point / "semantic").rglob("*.sem")]
        ours, fits = point_rows[0], fit_counts(point)
        cells = [("- (lossless)" if budget is None else f"{budget} B"), f"{np.mean(sizes):.1f}",
                 _number(ours.get("bpp")), _coded_as(point, budget)]
        cells += [_number(ours.get(key)) for key, _ in ours_columns]
        cells += [f"{_number(row.get('sem_miou'))} ({fits.get(row['method'], '-')})" for row in point_rows[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _coded_as(point: Path, budget: int | None) -> str:
    """How the maps of one point were coded: the grids rate control chose, and how many files
    are lossless or over the budget."""
    from models.bitstream import inspect_code

    infos = [inspect_code(path.read_bytes()) for path in sorted((point / "semantic").rglob("*.sem"))]
    grids = sorted(info.grid for info in infos if info.grid is not None)
    over = sum(info.num_bytes > budget for info in infos) if budget is not None else 0
    parts = [f"grid {grids[0]}-{grids[-1]}" if grids else None,
             "lossless" if not grids else (f"{len(infos) - len(grids)} lossless" if len(grids) < len(infos) else None),
             f"{over} over budget" if over else None]
    return ", ".join(part for part in parts if part)


def draw_grid(output_dir: Path, originals: Path, rows: list[dict], codecs: list[str], count: int) -> Path:
    """grid.png: original | transmitted label map | ours | each codec, one image per row."""
    from models.bitstream import read_sem
    from models.palettes import colorize
    from models.evaluation.plots import plot_image_grid

    bpp = {row["method"]: row.get("bpp") for row in rows}
    titles = ["original", "label map (sent)"] + [
        f"{name}\n{bpp[name]:.3f} bpp" if bpp.get(name) is not None else name for name in ["ours", *codecs]]
    cells, captions, originals_by_stem = [], [], index_by_stem(originals)
    for key, sem in sorted(index_by_stem(output_dir / "semantic", suffix=SEM_SUFFIX).files.items())[:count]:
        rel = output_relpath(key, IMAGE_OUTPUT_SUFFIX)
        code = read_sem(sem)
        images = [Image.open(originals_by_stem.files[key]),
                  Image.fromarray(colorize(code.label_map, find_label_set(sem, code.label_set))),
                  Image.open(output_dir / "reconstructions" / rel)]
        images += [Image.open(output_dir / "baselines" / f"{codec}_decoded" / rel) for codec in codecs]
        cells.append([thumbnail(image, GRID_CELL) for image in images])
        captions.append(_wrap(code.caption, 26))
    plot_image_grid(cells, titles, captions, output_dir / "grid.png", cell_height=GRID_CELL)
    return output_dir / "grid.png"


def _wrap(text: str, width: int) -> str:
    """``text`` broken into lines of at most about ``width`` characters."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def encoder_accuracy(output_dir: Path, truth_captions: dict[str, str], num_classes: int) -> dict[str, float]:
    """For generated shapes: the transmitted maps against the exact ones (mIoU), and the share of
    captions equal to the data set's."""
    from models.bitstream import read_sem
    from models.imageio import read_label_map
    from models.layout import label_map_relpath, sem_relpath
    from models.quickstart.quality import dataset_miou

    codes = {name: read_sem(output_dir / "semantic" / sem_relpath(name)) for name in truth_captions}
    truths = [read_label_map(output_dir / "truth_maps" / label_map_relpath(name)) for name in codes]
    return {"segmenter_miou": dataset_miou(truths, [c.label_map for c in codes.values()], num_classes),
            "caption_accuracy": float(np.mean([codes[n].caption == c for n, c in truth_captions.items()]))}


def write_report(output_dir: Path, args: argparse.Namespace, table: str, seconds: dict[str, float],
                 accuracy: dict[str, float] | None, config: Config, rd_table: str | None = None) -> Path:
    """report.md: what ran, the table, the pictures and how to read them."""
    lines = ["# Semantic compression: demo report", "",
             f"Config `{args.config_path}`; inputs: " + (
                 f"`{args.input_dir}`" if args.input_dir else
                 f"{args.num_images} freshly generated shapes images (split `{HELD_OUT_SPLIT}`, seed "
                 f"{args.seed}), never seen in training"),
             f"Captions: BLIP (`{config.captioning.model}`), as `process_input.py` produced them.", ""]
    if accuracy is not None:
        lines += [f"- Segmenter on the originals vs the exact label maps: mIoU {accuracy['segmenter_miou']:.3f}",
                  f"- Captions identical to the data set's: {accuracy['caption_accuracy']:.0%}", ""]
    lines += ["## Metrics (means over the images)", "", table, "",
              "`bits/pixel` is the file size: the `.sem` file for ours, the codec's file for the others, "
              "each baseline given the same number of bytes as our file for that image (shrinking the "
              "image when even its lowest quality does not fit; `fits` counts the images that did). "
              "`semantic mIoU` re-segments each method's images with our segmenter and compares them "
              "with the label maps we sent. MS-SSIM needs images larger than 160 pixels a side.", "",
              "![grid](grid.png)", "", *_rate_distortion_section(rd_table),
              "![rate-distortion](rate_distortion.png)", "",
              "## Folders", "", ("originals in `" + str(args.input_dir) + "`" if args.input_dir else
                                 "`originals/` (exact label maps in `truth_maps/`)")
              + ", `semantic/` (.sem files), `reconstructions/`, `baselines/`, `rate_control/<N>B/` (the same "
              "three at N bytes per file), `evaluation/` (per-run metrics.csv and summary.json).", "",
              "## Time (seconds)", "", " | ".join(f"{k} {v}" for k, v in seconds.items()), ""]
    path = output_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _rate_distortion_section(rd_table: str | None) -> list[str]:
    """The report's lines on our curve (none when only the lossless point was run)."""
    if not rd_table:
        return []
    return ["## Our rate-distortion curve", "",
            "Each row re-codes the `.sem` files within a byte budget (rate control: lossless when the file fits, "
            "else the finest grid that fits), decodes them and gives the codecs the same bytes. `mIoU` "
            "re-segments the images and compares them with the lossless label maps, so it counts what the "
            "coarser maps lose.", "", rd_table, ""]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    output_dir = Path(args.output_dir)
    try:
        config = load_config(args.config_path)
        missing = missing_weights(config)
        if missing:
            raise ValueError(f"{args.config_path} names models that are not on this machine: "
                             f"{', '.join(missing)}; see checkpoints/README.md (the shipped small "
                             f"system needs no downloads: --config_path {SHAPES_CONFIG.relative_to(PROJECT_ROOT)})")
        if args.input_dir is not None and not Path(args.input_dir).is_dir():
            raise ValueError(f"--input_dir {args.input_dir} is not a folder")
        if any(budget < 1 for budget in args.budgets):
            raise ValueError(f"--budgets must be whole numbers of bytes of at least 1, got {args.budgets}")
        if args.input_dir is not None and _inside(Path(args.input_dir), output_dir):
            raise ValueError(f"--input_dir {args.input_dir} lies inside --output_dir {output_dir}, "
                             f"which the demo empties")
        clear_report_folder(output_dir)
    except (ValueError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    truth_captions = None
    if args.input_dir is None:
        truth_captions = write_shapes_inputs(output_dir, args.num_images, args.seed)
    originals = Path(args.input_dir) if args.input_dir else output_dir / "originals"
    budgets = list(dict.fromkeys(args.budgets))
    try:
        seconds = run_chain(originals, output_dir, args.config_path, args.codecs, args.metrics, budgets)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    rows = method_rows(output_dir)
    main_rows = rows[:len(args.codecs) + 1]  # the lossless point
    table = metrics_table(main_rows, fit_counts(output_dir))
    rd_table = rate_distortion_table(output_dir, rows, args.codecs, budgets) if budgets else None
    (output_dir / "metrics.md").write_text(table + "\n" + (f"\nOur curve:\n\n{rd_table}\n" if rd_table else ""),
                                           encoding="utf-8")
    draw_grid(output_dir, originals, main_rows, args.codecs, args.grid_images)
    if (output_dir / "evaluation" / "rate_distortion.png").exists():
        shutil.copyfile(output_dir / "evaluation" / "rate_distortion.png", output_dir / "rate_distortion.png")
    accuracy = (encoder_accuracy(output_dir, truth_captions, config.segmentation.num_classes)
                if truth_captions else None)
    seconds["total"] = round(time.perf_counter() - start, 1)
    report = write_report(output_dir, args, table, seconds, accuracy, config, rd_table)
    print("\n" + table + (f"\n\n{rd_table}" if rd_table else "") + f"\n\nreport: {report.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
