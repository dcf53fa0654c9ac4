"""Decoding a folder of semantic codes: plan, run on every device, record, report.

Inputs: label maps (palette PNGs, as process_input.py writes them) under one folder, and a
``prompts.json`` mapping each original image's relative path to its caption. Outputs under the
output folder:

- ``<relative path>.png``: the decoded image, at the label map's (the original image's) size;
- ``manifest.json``: ``{"settings": ..., "images": {output path: {input, caption, seed, size,
  generation_size[, redone_in_float32]}}, "software": ...}``: everything needed to reproduce each
  image. A half-precision batch whose latents or pixels are not all finite is computed again in
  float32, and its images say so (``redone_in_float32``); if float32 fails too, they are errors.

Determinism: every image's noise comes from its own seed, and batches are formed once, over all
inputs in sorted order, with a fixed batch size; processes then take whole batches. So what is
computed together never depends on the number of processes, and an image's bytes do not either.

Resuming (``skip_existing``): an image is done when its file exists and the manifest (or a
per-process ``.manifest.rank<R>.jsonl`` left by an interrupted run) records it under the same
settings. A batch whose images are all done is skipped; a partly done batch is computed again
(so that its images come out exactly as in an uninterrupted run) and only its missing images are
written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytorch_lightning as pl
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from models.bitstream import read_code_file
from models.config import Config
from models.decode.decoder import ControlNetDecoder, NonFiniteOutput, form_batches, image_seed
from models.imageio import (CHANGED_SINCE_PLANNED, ImageReadError, atomic_save_image, atomic_write_json,
                            file_fingerprint, is_image_name, read_json, walk_files)
from models.jobcontrol import JobInterrupted, StopSignals
from models.layout import (IMAGE_OUTPUT_SUFFIX, LABEL_SET_FILE, SEM_SUFFIX, CaptionIndex, RankRecords, find_label_set,
                           output_relpath, read_consistently, read_prompts, stem_key)
from models.palettes import VOC, LabelSet
from models.runtime import (PRECISIONS, DeviceSpec, JobResult, OutputWriter, library_versions, prediction_trainer,
                            print_job_report)
from models.semantic_code import SemanticCode

MANIFEST_FILE = "manifest.json"


class InputError(Exception):
    """An input cannot be decoded; ``reason`` says why (the caller names the file)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def is_semantic_code_file(relpath: str) -> bool:
    """Whether a file under the input folder is decoded: a ``.sem`` file or a label-map image."""
    return relpath.lower().endswith(SEM_SUFFIX) or is_image_name(relpath)


def read_semantic_code(path: Path, caption: str | None, missing_caption: str = "error") -> SemanticCode:
    """The semantic code stored at ``path``: a ``.sem`` file, or a label-map PNG plus ``caption``.

    The one place where decoder inputs are read. A ``.sem`` file carries its own caption and seed
    (``caption`` from prompts.json only fills in for a ``.sem`` stored without one). A missing
    caption is an error, or the empty caption when ``missing_caption`` is "empty".
    """
    if path.suffix.lower() != SEM_SUFFIX and caption is None and missing_caption == "error":
        raise InputError("no caption for it in the prompts file")
    try:
        code = read_code_file(path)
    except ImageReadError as error:
        raise InputError(error.reason) from None
    if not code.caption:
        if caption is None and missing_caption == "error":
            raise InputError("the .sem file holds no caption and the prompts file has none for it")
        code.caption = caption or ""
    return code


def label_set_of(path: Path, code: SemanticCode) -> LabelSet:
    """The label set of the code read from ``path``: named in a ``.sem`` file (built in, or a
    ``label_set.json`` above it of that name), or the ``label_set.json`` above a label-map PNG."""
    try:
        return find_label_set(path, code.label_set if path.suffix.lower() == SEM_SUFFIX else None)
    except ValueError as error:
        raise InputError(str(error).removeprefix(f"{path.absolute()}: ")) from None


def sem_shadowed(relpaths: list[str]) -> set[str]:
    """Label-map images that have a ``.sem`` file of the same path and stem: the code is decoded."""
    sem_stems = {stem_key(r) for r in relpaths if r.lower().endswith(SEM_SUFFIX)}
    return {r for r in relpaths if not r.lower().endswith(SEM_SUFFIX) and stem_key(r) in sem_stems}


def read_caption_index(path: Path) -> CaptionIndex:
    """The captions of a prompts file (``ValueError`` naming the file if it is missing or malformed)."""
    try:
        return CaptionIndex(read_prompts(path))
    except ValueError as error:
        if path.exists():
            raise
        raise ValueError(f"{error} (give --prompt_json_path, or set decode.missing_caption=empty "
                         f"to decode without captions)") from None


@dataclass(frozen=True)
class DecodeItem:
    """One input to decode, as planned."""

    relpath: str  # the label map's path relative to the input folder
    path: Path
    caption: str
    seed: int
    size: tuple[int, int]  # original (width, height)
    generation_size: tuple[int, int]  # (width, height) generated at
    label_set: LabelSet = VOC  # what its label map's values mean
    fingerprint: str = ""  # the file's version when planned (models.imageio.file_fingerprint)

    @property
    def output_relpath(self) -> str:
        return output_relpath(self.relpath, IMAGE_OUTPUT_SUFFIX)

    def record(self) -> dict[str, Any]:
        """This image's manifest entry."""
        return {"input": self.relpath, "caption": self.caption, "seed": self.seed, "label_set": self.label_set.name,
                "size": list(self.size), "generation_size": list(self.generation_size)}


@dataclass
class DecodePlan:
    """What a run will do, decided identically by every process before any work starts."""

    batches: list[list[DecodeItem]] = field(default_factory=list)  # every good input, batched
    done: set[str] = field(default_factory=set)  # output paths finished earlier
    failures: dict[str, str] = field(default_factory=dict)  # relpath -> reason
    ignored: list[str] = field(default_factory=list)  # not label-map files
    warnings: list[str] = field(default_factory=list)

    @property
    def todo_batches(self) -> list[list[DecodeItem]]:
        return [batch for batch in self.batches if any(i.output_relpath not in self.done for i in batch)]


def plan_decode(input_dir: Path, captions: CaptionIndex, decoder: ControlNetDecoder, config: Config,
                skip_files: tuple[Path, ...] = ()) -> DecodePlan:
    """Read every input under ``input_dir`` once, check it, give it a seed and put it in a batch."""
    plan, items, claimed = DecodePlan(), [], {}
    entries = [entry for entry in walk_files(input_dir)
               if entry.path not in skip_files and PurePosixPath(entry.relpath).name != LABEL_SET_FILE]
    shadowed = sem_shadowed([entry.relpath for entry in entries])
    if shadowed:
        plan.warnings.append(f"{len(shadowed)} label-map image(s) have a .sem file of the same name; "
                             f"the .sem files are decoded")
    for entry in entries:
        if entry.relpath in shadowed:
            continue
        if not is_semantic_code_file(entry.relpath):
            plan.ignored.append(entry.relpath)
            continue
        try:
            caption = captions.get(entry.relpath)
            items.append(_plan_item(entry.path, entry.relpath, caption, decoder, config, claimed))
        except (InputError, ValueError) as error:  # ValueError: several captions match
            plan.failures[entry.relpath] = str(error)
            continue
        if caption is None and not items[-1].caption:
            plan.warnings.append(f"{entry.relpath}: no caption in the prompts file; decoded with an empty caption")
    plan.batches = [[items[i] for i in batch]
                    for batch in form_batches([i.generation_size for i in items], config.decode.batch_size)]
    return plan


def _plan_item(path: Path, relpath: str, caption: str | None, decoder: ControlNetDecoder, config: Config,
               claimed: dict[str, str]) -> DecodeItem:
    """One checked input (its label map is read and validated, then dropped)."""
    output = output_relpath(relpath, IMAGE_OUTPUT_SUFFIX)
    if output in claimed:
        raise InputError(f"its output {output} would overwrite the one of {claimed[output]}; rename one")
    claimed[output] = relpath
    fingerprint = input_fingerprint(path)  # before reading: equal after decoding's read = same version
    code = read_semantic_code(path, caption, config.decode.missing_caption)
    label_set = label_set_of(path, code)
    try:
        decoder.check_code(code.label_map, label_set)
    except ValueError as error:
        raise InputError(str(error)) from None
    seed = code.seed if code.seed is not None else image_seed(config.decode.seed, stem_key(relpath))
    return DecodeItem(relpath=relpath, path=path, caption=code.caption, seed=seed, size=(code.width, code.height),
                      generation_size=decoder.generation_size(code.width, code.height), label_set=label_set,
                      fingerprint=fingerprint)


def input_fingerprint(path: Path) -> str:
    """The version of an input: size and time, and for a ``.sem`` file (a few hundred bytes, whose
    rewrite can keep both) a hash of its content."""
    try:
        return file_fingerprint(path, content=path.suffix.lower() == SEM_SUFFIX)
    except OSError as error:
        raise InputError(f"cannot read it ({error.strerror})") from None


def run_settings(decoder: ControlNetDecoder, config: Config, precision: str) -> dict[str, Any]:
    """Everything that decides the pixels of a run (compared when resuming)."""
    source = decoder.source
    return {
        "checkpoint": source.path if source else None, "checkpoint_format": source.format if source else None,
        "sd_model_path": config.diffusion.sd_model_path, "sampler": asdict(decoder.sampler),
        "seed": config.decode.seed, "batch_size": config.decode.batch_size,
        "control": asdict(decoder.control_spec), "resize_filter": config.decode.resize_filter,
        "precision": precision, "attention_slicing": config.decode.attention_slicing,
        "vae_tiling": config.decode.vae_tiling, "vae_slicing": config.decode.vae_slicing,
        "speed": asdict(decoder.speed),  # float rounding only, but part of what made the bytes
    }


class SettingsMismatch(ValueError):
    """The output folder holds images decoded with other settings."""


def manifest_records(output_dir: Path) -> RankRecords:
    """The per-process manifest records of a decoding job writing into ``output_dir``."""
    return RankRecords(output_dir, "manifest")


def read_manifest(output_dir: Path) -> dict[str, Any]:
    """The manifest with any per-process records folded in (later records win)."""
    def read() -> dict[str, Any]:
        manifest = read_json(output_dir / MANIFEST_FILE, default=None) or {"settings": None, "images": {}}
        for record in manifest_records(output_dir).read():
            if isinstance(record.get("output"), str):
                manifest["images"][record.pop("output")] = record
        return manifest
    return read_consistently(read)


def prepare_output(output_dir: Path, settings: dict, skip_existing: bool, is_rank_zero: bool) -> set[str]:
    """Output paths already done; rank 0 also rewrites the manifest for this run."""
    manifest = read_manifest(output_dir)
    if skip_existing and manifest["settings"] not in (None, settings):
        changed = sorted(k for k in set(settings) | set(manifest["settings"])
                         if settings.get(k) != manifest["settings"].get(k))
        raise SettingsMismatch(
            f"{output_dir} holds images decoded with other settings ({', '.join(changed)} differ); "
            f"use another --output_dir, or drop --skip_existing to decode everything again")
    images = {rel: entry for rel, entry in manifest["images"].items()
              if skip_existing and (output_dir / rel).is_file()}
    if is_rank_zero:
        write_manifest(output_dir, settings, images)
    return set(images)


def write_manifest(output_dir: Path, settings: dict, images: dict[str, dict]) -> None:
    """Write manifest.json atomically and delete the partial records it now contains."""
    software = library_versions("torch", "diffusers", "transformers")
    atomic_write_json(output_dir / MANIFEST_FILE,
                      {"settings": settings, "images": dict(sorted(images.items())), "software": software})
    manifest_records(output_dir).remove()


def _only(batches: list) -> Any:
    return batches[0]


class BatchList(Dataset):
    """The planned batches; each element is one whole batch."""

    def __init__(self, batches: list[list[DecodeItem]]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> list[DecodeItem]:
        return self.batches[index]


class DecodeModule(pl.LightningModule):
    """Decodes one planned batch; the decoder is placed on this process's device at the start."""

    def __init__(self, decoder: ControlNetDecoder, precision: str, cpu_offload: bool, done: set[str]):
        super().__init__()
        self.decoder = decoder  # not a registered module: placement (or CPU offload) is ours
        self.precision_name, self.cpu_offload, self.done = precision, cpu_offload, done

    def on_predict_start(self) -> None:
        self.decoder.place(self.device, PRECISIONS[self.precision_name], self.cpu_offload)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # file names and seeds only; tensors are made in predict_step

    def predict_step(self, batch: list[DecodeItem], batch_idx: int) -> list[dict]:
        records, good, codes = [], [], []
        for item in batch:
            try:
                code = read_semantic_code(item.path, item.caption, "empty")
                if input_fingerprint(item.path) != item.fingerprint:  # its manifest entry was planned
                    raise InputError(CHANGED_SINCE_PLANNED)
            except InputError as error:
                records.append({"item": item, "error": error.reason})
                continue
            codes.append(code)
            good.append(item)
        label_sets = {item.label_set.name: item.label_set for item in good}
        try:
            images = self.decoder.decode(codes, [item.seed for item in good], label_sets=label_sets) if codes else []
        except NonFiniteOutput as error:
            return records + [{"item": item, "error": f"{error}, also in float32"} for item in good]
        redone = self.decoder.redone_in_float32
        records += [{"item": item, "image": image, "redone_in_float32": index in redone}
                    for index, (item, image) in enumerate(zip(good, images)) if item.output_relpath not in self.done]
        return records


class DecodeWriter(OutputWriter):
    """Writes each image atomically, then appends its manifest record (per process)."""

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch,
                           batch_idx, dataloader_idx=0) -> None:
        records = []
        for record in prediction:
            item = record["item"]
            if "error" in record:
                self.failures[item.relpath] = record["error"]
                continue
            atomic_save_image(Image.fromarray(record["image"]), self.output_dir / item.output_relpath)
            records.append({"output": item.output_relpath, **item.record(),
                            **({"redone_in_float32": True} if record["redone_in_float32"] else {})})
            self.written += 1
        manifest_records(self.output_dir).append(trainer.global_rank, records)


def run_decode(plan: DecodePlan, decoder: ControlNetDecoder, devices: DeviceSpec, output_dir: Path,
               settings: dict, cpu_offload: bool = False, progress_bar: bool = True,
               stop: StopSignals | None = None) -> JobResult:
    """Decode the batches of ``plan`` that are not done, on every device in ``devices``. With
    ``stop``, a signal ends the job after the batch in flight (``JobInterrupted``, whose ``kept``
    is the number of images this process wrote)."""
    batches: list[list[DecodeItem]] = plan.todo_batches
    batches += [[] for _ in range(max(0, devices.world_size - len(batches)))]  # every process gets one
    loader = DataLoader(BatchList(batches), batch_size=1, collate_fn=_only, shuffle=False)
    writer = DecodeWriter(output_dir)
    trainer = prediction_trainer(devices, callbacks=[writer], progress_bar=progress_bar, stop=stop)
    module = DecodeModule(decoder, settings["precision"], cpu_offload, plan.done)
    try:
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    except JobInterrupted as error:
        error.kept = writer.written
        raise
    result = writer.result(trainer)
    if trainer.is_global_zero:
        manifest = read_manifest(output_dir)
        write_manifest(output_dir, settings, manifest["images"])
    trainer.strategy.barrier()
    return result


def report(plan: DecodePlan, result: JobResult | None, output_dir: Path) -> int:
    """One line per failed or skipped file and a summary; the exit status (1 if anything failed)."""
    failures = {**plan.failures, **(result.failures if result is not None else {})}
    done = sum(i.output_relpath in plan.done for batch in plan.batches for i in batch)
    return print_job_report("decoded", result.written if result is not None else 0, done, failures,
                            plan.ignored, "not a label map (by its extension)", output_dir, plan.warnings)

