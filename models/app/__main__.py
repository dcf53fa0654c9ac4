"""Serve the browser demo: upload a photo, see what travels and what comes back.

    python -m models.app [--config_path configs/shapes.yaml] [--host 127.0.0.1] [--port 7860] [--share]

By default on the small shapes system shipped in ``checkpoints/shapes/`` (offline, CPU, about a
second per image); ``--config_path configs/config.yaml`` serves the real system (its weights must
be present). Everything the server writes (uploads, ``.sem`` downloads, examples) goes into one
temporary folder, removed when it stops.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np

from models.config import ConfigError, load_config
from models.quickstart.model_folder import SHAPES_CONFIG

QUEUE_SIZE = 32  # requests waiting beyond this are turned away with a message


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.app", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config_path", default=str(SHAPES_CONFIG),
                        help="configs/shapes.yaml: the shipped small models; configs/config.yaml: the real ones")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    return parser.parse_args(argv)


def is_shapes(config_path: str) -> bool:
    return Path(config_path).resolve() == Path(SHAPES_CONFIG).resolve()


def example_images(config_path: str) -> list[np.ndarray]:
    """Held-out shapes images for the shapes system; scikit-image's photographs for the real one."""
    if is_shapes(config_path):
        from models.quickstart.shapes import held_out_samples

        return [np.asarray(sample.image) for sample in held_out_samples(4)]
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]


def display_names(config_path: str) -> dict[int, str] | None:
    """What the shapes system's VOC ids stand for (1 circle, ...); None for the real system."""
    if not is_shapes(config_path):
        return None
    from models.quickstart.shapes import SHAPE_CLASS_IDS

    return {0: "background", **{value: name for name, value in SHAPE_CLASS_IDS.items()}}


def stop(signum: int, frame) -> None:
    """SIGTERM handler: stop the way Ctrl-C stops Gradio's server loop."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config_path)
    except (ConfigError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from models.quickstart.demo import missing_weights

    missing = missing_weights(config)
    if missing:
        print(f"error: weights not found: {', '.join(missing)} (see checkpoints/README.md)", file=sys.stderr)
        return 2
    temp_dir = Path(tempfile.mkdtemp(prefix="semantic-compression-app-"))
    atexit.register(shutil.rmtree, temp_dir, ignore_errors=True)
    os.environ["GRADIO_TEMP_DIR"] = str(temp_dir / "gradio")  # read when gradio is imported
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(temp_dir / "torchinductor"))  # else $TMPDIR/torchinductor_*
    from models.app.page import PAGE_CSS, build_page, example_files, page_theme
    from models.app.service import DemoService

    service = DemoService(config, temp_dir / "files", display_names(args.config_path))
    examples = example_files(temp_dir / "examples", example_images(args.config_path))
    page = build_page(service, examples, "Semantic compression")
    page.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    signal.signal(signal.SIGTERM, stop)  # as Ctrl-C: the server closes and the temporary folder goes
    print(f"serving {args.config_path} on http://{args.host}:{args.port} (temporary files in {temp_dir})",
          flush=True)
    page.launch(server_name=args.host, server_port=args.port, share=args.share, theme=page_theme(),
                css=PAGE_CSS, ssr_mode=False, allowed_paths=[str(temp_dir)], footer_links=[], quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
