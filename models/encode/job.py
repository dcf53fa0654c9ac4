"""Encoding a folder of images: plan, run on every device, merge, report.

Layout written under the output folder:

- ``<relative path>.sem``: the label map, caption and seed of each input image in our compact
  file format (``models.bitstream``, ``docs/bitstream.md``); its size is the rate we report;
- ``<relative path>.png``: the label map of each input image, a palette PNG (pixel = class id,
  coloured with its label set's colours);
- ``prompts.json``: ``{relative input path: caption}`` for every encoded image;
- ``label_set.json``: the label set of the maps (``models.layout.find_label_set``).

``OutputSpec.format`` chooses the outputs: ``png`` (the training layout, PNG + ``prompts.json``;
the default here, which ``models.train.prepare_data`` relies on), ``sem`` (only ``.sem`` files) or
``both`` (what ``process_input.py`` writes by default). ``.sem`` files are lossless, on
``OutputSpec.grid``, or the finest file within a byte budget (``target_bytes`` / ``target_bpp``;
``models.bitstream.rate_control``; a file over budget even at the coarsest grid is kept there and
reported, and the exit status is then ``OVER_BUDGET_STATUS``). The job is resumable: an image counts
as done when every requested output exists (its ``.sem`` file; its label map and its recorded
caption), and done images are skipped unless ``overwrite`` is set. While the job runs, each
process appends its captions to ``.prompts.rank<R>.jsonl`` right after writing the label map;
at the end rank 0 merges those into ``prompts.json`` (an interrupted job's leftovers are merged
by the next run). Every process plans from the same file listing, so the work is split without
communication, and each item is written by exactly one process.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from models.bitstream import (OVER_BUDGET_STATUS, BitstreamError, Fitted, inspect_code, read_sem_bytes, write_sem,
                              write_sem_within)
from models.config import Config
from models.encode.encoder import SemanticEncoder
from models.imageio import (CHANGED_SINCE_PLANNED, ImageReadError, InputFile, atomic_save_image, file_fingerprint,
                            read_json, read_rgb)
from models.jobcontrol import JobInterrupted, StopSignals, ignore_stop_signals
from models.layout import (ENCODE_FORMATS, LABEL_SET_FILE, PROMPTS_FILE, RankRecords, label_map_relpath, list_inputs,
                           read_consistently, read_prompts, sem_relpath, write_label_set, write_prompts)
from models.palettes import LabelSet, label_map_to_pil
from models.rate import budget_bytes
from models.runtime import (DeviceSpec, JobResult, OutputWriter, is_global_zero, network_dtype, prediction_trainer,
                            print_job_report)
from models.semantic_code import SemanticCode


@dataclass(frozen=True)
class OutputSpec:
    """Which files the job writes for each image, and how ``.sem`` files are coded."""

    format: str = "png"  # "png" (PNG + prompts.json), "sem" (.sem files only) or "both"
    grid: int | None = None  # .sem compact mode: grid cells on the long side; None: lossless
    seed: int | None = None  # decoding seed stored in every .sem file
    target_bytes: int | None = None  # .sem byte budget per file: the finest file that fits (rate control)
    target_bpp: float | None = None  # the same budget in bits per pixel of each image

    def __post_init__(self) -> None:
        if self.format not in ENCODE_FORMATS:
            raise ValueError(f"unknown output format {self.format!r}; "
                             f"choose one of {ENCODE_FORMATS}")
        if self.grid is not None and self.grid < 1:
            raise ValueError(f"--grid must be at least 1, got {self.grid}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise ValueError(f"--seed must be in 0..2^64-1, got {self.seed}")
        if sum(value is not None for value in (self.grid, self.target_bytes, self.target_bpp)) > 1:
            raise ValueError("give at most one of --grid, --target_bytes and --target_bpp")
        try:
            budget_bytes(1, 1, self.target_bytes, self.target_bpp)
        except ValueError as error:
            flag = "--target_bytes" if self.target_bytes is not None else "--target_bpp"
            raise ValueError(f"{flag}: {error}") from None

    def budget(self, width: int, height: int) -> int | None:
        """The byte budget of the ``.sem`` file of a ``width`` x ``height`` image; None: no budget."""
        return budget_bytes(width, height, self.target_bytes, self.target_bpp)

    @property
    def has_budget(self) -> bool:
        return self.target_bytes is not None or self.target_bpp is not None

    @property
    def writes_sem(self) -> bool:
        return self.format in ("both", "sem")

    @property
    def writes_png(self) -> bool:
        return self.format in ("both", "png")


def label_map_path(output_dir: Path, relpath: str) -> Path:
    """Where the label map of the input at ``relpath`` goes."""
    return output_dir / label_map_relpath(relpath)


def sem_path(output_dir: Path, relpath: str) -> Path:
    """Where the ``.sem`` file of the input at ``relpath`` goes."""
    return output_dir / sem_relpath(relpath)


def caption_records(output_dir: Path) -> RankRecords:
    """The per-process caption files of an encoding job writing into ``output_dir``."""
    return RankRecords(output_dir, "prompts")


def is_done(relpath: str, output_dir: Path, outputs: OutputSpec, captions: dict[str, str]) -> bool:
    """Whether every output that ``outputs`` asks for exists for this input."""
    png_done = relpath in captions and label_map_path(output_dir, relpath).exists()
    return ((not outputs.writes_png or png_done)
            and (not outputs.writes_sem or sem_path(output_dir, relpath).exists()))


@dataclass
class EncodePlan:
    """What a run will do, decided before any work starts."""

    todo: list[InputFile] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # already encoded, skipped
    ignored: list[str] = field(default_factory=list)  # not image files
    failures: dict[str, str] = field(default_factory=dict)  # relpath -> reason
    overwrite: bool = False  # redo done images (and replace the folder's label set)
    over_budget: dict[str, str] = field(default_factory=dict)  # done images whose .sem file exceeds the budget
    fingerprints: dict[str, str] = field(default_factory=dict)  # relpath -> its version when planned (to do only)


def read_captions(output_dir: Path) -> dict[str, str]:
    """Captions from ``prompts.json`` and any per-process caption files (later ones win)."""
    def read() -> dict[str, str]:
        captions = read_prompts(output_dir / PROMPTS_FILE, required=False)
        captions.update({record["image"]: record["caption"] for record in caption_records(output_dir).read()
                         if isinstance(record.get("image"), str) and isinstance(record.get("caption"), str)})
        return captions
    return read_consistently(read)


def plan_encode(input_dir: Path, output_dir: Path, overwrite: bool = False,
                outputs: OutputSpec = OutputSpec()) -> EncodePlan:
    """Sort the files under ``input_dir`` into to-do, done, ignored and failed."""
    listing = list_inputs(input_dir)
    plan = EncodePlan(ignored=listing.ignored, overwrite=overwrite)
    for relpath, other in listing.clashes.items():
        plan.failures[relpath] = (f"its label map {label_map_relpath(relpath)} would overwrite the one of {other} "
                                  f"(same name, different extension); rename one of them")
    captions = {} if overwrite or not outputs.writes_png else read_captions(output_dir)
    for item in listing.files:
        if not overwrite and is_done(item.relpath, output_dir, outputs, captions):
            plan.done.append(item.relpath)
            overshoot = done_over_budget(sem_path(output_dir, item.relpath), outputs)
            if overshoot:
                plan.over_budget[item.relpath] = overshoot
        else:
            try:
                plan.fingerprints[item.relpath] = file_fingerprint(item.path)
            except OSError as error:
                plan.failures[item.relpath] = f"cannot read it ({error.strerror})"
                continue
            plan.todo.append(item)
    return plan


def done_over_budget(path: Path, outputs: OutputSpec) -> str | None:
    """Why the ``.sem`` file an earlier run left at ``path`` exceeds the budget of ``outputs``; None
    when it fits (or there is no budget, or no readable file)."""
    if not (outputs.has_budget and outputs.writes_sem):
        return None
    try:
        info = inspect_code(read_sem_bytes(path))
    except BitstreamError:
        return None
    budget = outputs.budget(info.width, info.height)
    if info.num_bytes <= budget:
        return None
    mode = "lossless" if info.grid is None else f"grid {info.grid}"
    return (f"{info.num_bytes} bytes ({mode}), over the {budget}-byte budget by {info.num_bytes - budget} bytes "
            f"(written by an earlier run; --overwrite codes it again)")


class ImageFiles(Dataset):
    """Decodes input images in data-loader workers; a bad file, or one that changed since it was
    planned (``fingerprints``, when given), becomes an error record."""

    def __init__(self, items: list[InputFile | None], max_pixels: int | None,
                 fingerprints: dict[str, str] | None = None):
        self.items = items
        self.max_pixels = max_pixels
        self.fingerprints = fingerprints

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        if item is None:  # padding so that every process gets at least one item
            return {"relpath": None}
        try:
            image = np.asarray(read_rgb(item.path, self.max_pixels), dtype=np.uint8)
            if self.fingerprints is not None and file_fingerprint(item.path) != self.fingerprints.get(item.relpath):
                return {"relpath": item.relpath, "error": CHANGED_SINCE_PLANNED}
            return {"relpath": item.relpath, "image": image}
        except ImageReadError as error:
            return {"relpath": item.relpath, "error": error.reason}
        except OSError as error:  # gone since planning
            return {"relpath": item.relpath, "error": f"cannot read it any more ({error.strerror})"}


class EncodeModule(pl.LightningModule):
    """Runs the semantic encoder on one batch of decoded images."""

    def __init__(self, encoder: SemanticEncoder, precision: str = "32"):
        super().__init__()
        self.encoder = encoder
        self.segmenter = encoder.segmenter  # registered, so Lightning moves them to the device
        self.caption_model = encoder.captioner.model
        self.precision_name = precision

    def on_predict_start(self) -> None:
        self.to(network_dtype(self.precision_name, self.device))

    def predict_step(self, batch: list[dict], batch_idx: int) -> list[dict]:
        good = [record for record in batch if "image" in record]
        codes = self.encoder.encode([record["image"] for record in good]) if good else []
        for record, code in zip(good, codes):
            record["code"] = code
            del record["image"]
        return [record for record in batch if record["relpath"] is not None]


@dataclass
class EncodeResult(JobResult):
    """A job's result with what rate control chose for each ``.sem`` file it wrote."""

    fitted: dict[str, Fitted] = field(default_factory=dict)  # relpath -> file (only with a budget)

    @property
    def over_budget(self) -> dict[str, str]:
        """relpath -> size and overshoot, for the files over their budget even at the coarsest grid."""
        return {relpath: fitted.describe() for relpath, fitted in self.fitted.items() if not fitted.fits}


class EncodeWriter(OutputWriter):
    """Writes .sem files and/or label maps and captions as soon as a batch is done."""

    def __init__(self, output_dir: Path, outputs: OutputSpec = OutputSpec()):
        super().__init__(output_dir)
        self.outputs = outputs
        self.fitted: dict[str, Fitted] = {}

    def result(self, trainer) -> EncodeResult:
        """Every process's counts, failures and rate-control choices (call it on every process)."""
        base, parts = super().result(trainer), [self.fitted]
        if trainer.world_size > 1:
            parts = [None] * trainer.world_size
            torch.distributed.all_gather_object(parts, self.fitted)
        fitted = {relpath: chosen for part in parts for relpath, chosen in part.items()}
        return EncodeResult(base.written, base.failures, base.is_global_zero, fitted)

    def write_sem(self, relpath: str, code: SemanticCode) -> None:
        """The ``.sem`` file of one image: at the budget, on the grid, or lossless."""
        code = SemanticCode(code.label_map, code.caption, self.outputs.seed, code.label_set)
        path = sem_path(self.output_dir, relpath)
        budget = self.outputs.budget(code.width, code.height)
        if budget is None:
            write_sem(path, code, grid=self.outputs.grid)
        else:
            self.fitted[relpath] = write_sem_within(path, code, budget)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch,
                           batch_idx, dataloader_idx=0) -> None:
        captions = []
        for record in prediction:
            if "error" in record:
                self.failures[record["relpath"]] = record["error"]
                continue
            code = record["code"]
            if self.outputs.writes_sem:
                try:
                    self.write_sem(record["relpath"], code)
                except ValueError as error:  # e.g. a map larger than the format allows
                    self.failures[record["relpath"]] = f"cannot write its .sem file ({error})"
                    continue
            if self.outputs.writes_png:
                atomic_save_image(label_map_to_pil(code.label_map, pl_module.encoder.segmenter.label_set),
                                  label_map_path(self.output_dir, record["relpath"]))
                captions.append({"image": record["relpath"], "caption": code.caption})
            self.written += 1
        caption_records(self.output_dir).append(trainer.global_rank, captions)


def merge_captions(output_dir: Path) -> dict[str, str]:
    """Fold the per-process caption files into ``prompts.json`` (atomically) and delete them."""
    captions = read_captions(output_dir)
    write_prompts(output_dir / PROMPTS_FILE, captions)
    caption_records(output_dir).remove()
    return captions


def claim_label_set(output_dir: Path, label_set: LabelSet, plan: EncodePlan) -> None:
    """Record that ``output_dir`` holds ``label_set`` maps (rank 0 writes ``label_set.json``);
    ``ValueError`` if the maps already there are of another set (a folder without the sidecar
    holds VOC maps), unless the plan overwrites them."""
    path = output_dir / LABEL_SET_FILE
    try:
        existing = read_json(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable ({error}); delete it or pass --overwrite") from None
    name = existing.get("name") if isinstance(existing, dict) else ("voc" if plan.done else None)
    if name not in (None, label_set.name) and not plan.overwrite:
        raise ValueError(f"{output_dir} holds {name} label maps (its {LABEL_SET_FILE}), this segmenter writes "
                         f"{label_set.name} maps; choose another --output_dir or pass --overwrite")
    if is_global_zero():
        write_label_set(output_dir, label_set)


def run_encode(plan: EncodePlan, config: Config, devices: DeviceSpec, output_dir: Path,
               progress_bar: bool = True, outputs: OutputSpec = OutputSpec(),
               stop: StopSignals | None = None) -> JobResult:
    """Encode ``plan.todo`` on the devices in ``devices``; failures of all processes are gathered.
    With ``stop``, a signal ends the job after the batch in flight (``JobInterrupted``, whose
    ``kept`` is the number of images this process wrote)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    items: list[InputFile | None] = list(plan.todo)
    items += [None] * max(0, devices.world_size - len(items))
    loader = DataLoader(ImageFiles(items, config.encode.max_pixels, plan.fingerprints),
                        batch_size=config.encode.batch_size, num_workers=config.encode.num_workers, collate_fn=list,
                        shuffle=False, worker_init_fn=ignore_stop_signals)
    writer = EncodeWriter(output_dir, outputs)
    trainer = prediction_trainer(devices, callbacks=[writer], progress_bar=progress_bar, stop=stop)
    module = EncodeModule(SemanticEncoder.from_config(config), config.encode.precision)
    claim_label_set(output_dir, module.encoder.segmenter.label_set, plan)  # what the maps' values mean
    if stop is not None:
        stop.check()  # a signal while the models loaded
    try:
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    except JobInterrupted as error:
        error.kept = writer.written
        raise
    result = writer.result(trainer)
    if trainer.is_global_zero and outputs.writes_png:
        merge_captions(output_dir)
    trainer.strategy.barrier()
    return result


def report(plan: EncodePlan, result: JobResult | None, output_dir: Path) -> int:
    """Print one line per failed or over-budget file and a summary; the exit status: 1 if anything
    failed, else 3 (``OVER_BUDGET_STATUS``) if a file exceeds its budget, else 0."""
    failures = {**plan.failures, **(result.failures if result is not None else {})}
    fitted = result.fitted if isinstance(result, EncodeResult) else {}
    over_budget = {**plan.over_budget, **(result.over_budget if isinstance(result, EncodeResult) else {})}
    for relpath in sorted(over_budget):
        print(f"over budget: {relpath}: {over_budget[relpath]}", file=sys.stderr)
    status = print_job_report("encoded", result.written if result is not None else 0, len(plan.done),
                              failures, plan.ignored, "not an image file (by its extension)", output_dir)
    if fitted:
        print(rate_control_summary(fitted))
    if over_budget:
        print(f"over budget: {len(over_budget)} file(s) exceed their budget even at the coarsest grid "
              f"(kept there; listed above)")
    return status or (OVER_BUDGET_STATUS if over_budget else 0)


def rate_control_summary(fitted: dict[str, Fitted]) -> str:
    """One line: how many files rate control wrote, their sizes, budgets and grids."""
    sizes = [chosen.num_bytes for chosen in fitted.values()]
    budgets = sorted({chosen.max_bytes for chosen in fitted.values()})
    grids = [chosen.grid for chosen in fitted.values() if chosen.grid is not None]
    budget = f"{budgets[0]}" if len(budgets) == 1 else f"{budgets[0]}-{budgets[-1]}"
    text = (f"rate control: {len(fitted)} file(s) of {min(sizes)}-{max(sizes)} bytes for a budget of {budget} "
            f"bytes; {len(fitted) - len(grids)} lossless")
    return text + (f", grids {min(grids)}-{max(grids)}" if grids else "")
