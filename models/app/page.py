"""The browser demo's page (Gradio Blocks): controls on the left, what travels and what comes
back on the right, the classic codecs at the same byte budget underneath.

Every handler turns ``AppError`` into ``gr.Error``, which the page shows as a message while the
server keeps serving; requests queue (one at a time through the models) and a long decode shows
its progress.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr
import numpy as np

from models.app.service import PAGE_CODECS, AppError, DemoService, Encoded, Settings, enlarge

PAGE_CSS = """
.legend { display: flex; flex-wrap: wrap; gap: 0.4em 1em; }
.legend-item { display: inline-flex; align-items: center; gap: 0.35em; }
.swatch { width: 1em; height: 1em; border: 1px solid #888; display: inline-block; }
"""
INTRO = """# Semantic compression
An image is stored as what a person would say about it: a label map (where each class is) and a
caption, coded into a `.sem` file of a few hundred bytes. The decoder draws a new picture with the
same content and layout. Below it, JPEG, WebP and AVIF get the same number of bytes."""
RESULT_COUNT = 1 + len(PAGE_CODECS)  # ours, then each codec


@dataclass
class PageState:
    """What the page keeps between clicks: the photo (None for an uploaded .sem) and its code."""

    photo: np.ndarray | None
    encoded: Encoded


def refuse(error: AppError) -> gr.Error:
    """The page's message for ``error``; the server's log gets one line, not a traceback."""
    print(f"request refused: {error}", file=sys.stderr, flush=True)
    return gr.Error(str(error), print_exception=False)


def settings_from(grid: float, seed: float, steps: float, guidance: float) -> Settings:
    """The controls' values as ``Settings`` (grid 0 means lossless)."""
    return Settings(grid=int(grid) or None, seed=int(seed or 0), steps=int(steps), guidance=float(guidance))


class Handlers:
    """The page's callbacks around one ``DemoService``."""

    def __init__(self, service: DemoService):
        self.service = service

    def compress(self, photo_path, grid, seed, steps, guidance, progress=gr.Progress()):
        """Photo -> label map and caption -> .sem -> decoded picture, and the codecs beside it."""
        try:
            settings = settings_from(grid, seed, steps, guidance)
            progress(0.05, desc="reading the photo")
            photo = self.service.read_photo(photo_path)
            progress(0.15, desc="segmenting and captioning")
            encoded = self.service.encode(photo, settings)
            return self._show(PageState(photo, encoded), settings, progress)
        except AppError as error:
            raise refuse(error) from None

    def redecode(self, state: PageState | None, caption, grid, seed, steps, guidance, progress=gr.Progress()):
        """The same label map with the edited caption: a new .sem file and a new picture."""
        try:
            if state is None:
                raise AppError("compress a photo (or decode a .sem file) first")
            settings = settings_from(grid, seed, steps, guidance)
            grid_used = settings.grid if state.photo is not None else state.encoded.grid  # a .sem keeps its grid
            encoded = self.service.recode(replace(state.encoded.code, caption=caption.strip()), grid_used)
            return self._show(PageState(state.photo, encoded), settings, progress)
        except AppError as error:
            raise refuse(error) from None

    def decode_sem(self, sem_path, seed, steps, guidance, progress=gr.Progress()):
        """An uploaded .sem file decoded (no photo: no codecs and no scores)."""
        try:
            settings = settings_from(0, seed, steps, guidance)
            encoded = self.service.read_sem(sem_path)
            return self._show(PageState(None, encoded), settings, progress)
        except AppError as error:
            raise refuse(error) from None

    def _show(self, state: PageState, settings: Settings, progress) -> list:
        """Every output of the page for ``state``: map, legend, caption, size, file, pictures, scores."""
        service, encoded = self.service, state.encoded
        progress(0.3, desc=f"decoding ({settings.steps} steps)")
        picture = service.decode(encoded, settings, lambda step: progress(
            0.3 + 0.4 * min(step, settings.steps) / settings.steps, desc=f"decoding: step {step} of {settings.steps}"))
        pictures, notes = [picture], [f"ours: {encoded.num_bytes} bytes"]
        if state.photo is not None:
            progress(0.7, desc="JPEG, WebP and AVIF at the same size")
            results = service.codecs(state.photo, encoded.num_bytes)
            progress(0.85, desc="scoring")
            notes[0] += "\n\n" + service.scores(state.photo, picture, encoded.code.label_map).text()
            for result in results:
                pictures.append(result.image)
                notes.append(result.caption() + "\n\n" + service.scores(state.photo, result.image,
                                                                         encoded.code.label_map).text())
        else:
            notes[0] += "\n\n(no photo: upload one to compare with the codecs)"
        pictures += [None] * (RESULT_COUNT - len(pictures))
        notes += [""] * (RESULT_COUNT - len(notes))
        original = enlarge(state.photo) if state.photo is not None else None
        return [state, original, service.label_map_image(encoded.code), service.legend(encoded.code),
                encoded.code.caption, encoded.size_text(), str(encoded.sem_path),
                *[enlarge(p) if p is not None else None for p in pictures], *notes]


def build_page(service: DemoService, examples: list[str], title: str) -> gr.Blocks:
    """The page, wired to ``service``; ``examples``: photo files offered as one-click inputs."""
    handlers = Handlers(service)
    defaults = service.config.decode
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(INTRO)
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                photo = gr.File(label="photo", file_types=["image"], elem_id="photo-upload")
                gr.Examples(examples=[[path] for path in examples], inputs=[photo], label="examples")
                grid = gr.Slider(0, 128, value=0, step=1, label="grid: cells on the long side (0 = lossless)",
                                 elem_id="grid")
                seed = gr.Number(value=defaults.seed, precision=0, label="seed", elem_id="seed")
                steps = gr.Slider(1, 50, value=defaults.num_inference_steps, step=1, label="sampler steps")
                guidance = gr.Slider(1.0, 15.0, value=defaults.guidance_scale, step=0.5,
                                     label="guidance (1 = off)")
                compress = gr.Button("Compress", variant="primary", elem_id="compress")
                sem_upload = gr.File(label="or decode a .sem file", file_types=[".sem"], elem_id="sem-upload")
                decode_sem = gr.Button("Decode the .sem file", elem_id="decode-sem")
            with gr.Column(scale=2):
                with gr.Row():
                    original = gr.Image(label="photo", interactive=False, elem_id="original")
                    label_map = gr.Image(label="label map (what travels, with the caption)", interactive=False,
                                         elem_id="label-map")
                legend = gr.HTML(elem_id="legend")
                caption = gr.Textbox(label="caption (edit it, then decode again)", elem_id="caption")
                size = gr.Textbox(label=".sem file size", interactive=False, elem_id="sem-size")
                sem_file = gr.File(label="download the .sem file", interactive=False, elem_id="sem-download")
                redecode = gr.Button("Decode again with this caption", elem_id="redecode")
        with gr.Row():
            images, notes = [], []
            for index, name in enumerate(("ours", *PAGE_CODECS)):
                with gr.Column(min_width=160):
                    images.append(gr.Image(label=name if index else "ours (decoded)", interactive=False,
                                           elem_id=f"result-{name}"))
                    notes.append(gr.Markdown(elem_id=f"scores-{name}"))
        outputs = [state, original, label_map, legend, caption, size, sem_file, *images, *notes]
        controls = [grid, seed, steps, guidance]
        compress.click(handlers.compress, [photo, *controls], outputs)
        redecode.click(handlers.redecode, [state, caption, *controls], outputs)
        decode_sem.click(handlers.decode_sem, [sem_upload, seed, steps, guidance], outputs)
    return page


def page_theme() -> gr.themes.Theme:
    """Gradio's default theme with the system's fonts: nothing is fetched from a font service."""
    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def example_files(folder: Path, images: list[np.ndarray]) -> list[str]:
    """``images`` written as PNG files in ``folder`` (the page's examples)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"example-{index + 1}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    return paths
