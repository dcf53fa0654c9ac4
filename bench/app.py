"""How long the browser demo takes: server start-up, and a shapes photo's round trip clicked in
headless Chromium, against the same chain called in-process (no server, no browser).

    python bench/app.py [--count 8] [--chromium /usr/bin/chromium]

The round trip is what a visitor waits for: from the click on "Compress" until the scores under
the last codec are shown (encode, .sem file, decode at 20 steps, JPEG/WebP/AVIF at the same
size, every score). Needs Playwright and Debian's chromium (as tests/test_app_browser.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.app.service import DemoService, Settings  # noqa: E402
from models.config import load_config  # noqa: E402
from models.evaluation.report import format_table  # noqa: E402
from models.quickstart.model_folder import SHAPES_CONFIG  # noqa: E402
from models.quickstart.shapes import held_out_samples  # noqa: E402

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def start_server(workdir: Path) -> tuple[subprocess.Popen, str, float]:
    """``python -m models.app`` on a free port; the process, its address and seconds until it served."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "models.app", "--port", str(port)], cwd=workdir,
                               env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    while process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process, url, time.perf_counter() - start
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server exited with status {process.returncode}")


def browser_round_trips(url: str, photos: list[Path], chromium: str) -> list[float]:
    """Seconds from the click on Compress to the last score shown, per photo."""
    from playwright.sync_api import sync_playwright

    seconds = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(url)
        for photo in photos:
            clear = page.locator("#photo-upload button[aria-label=Clear]")
            if clear.count():
                clear.click()
            page.locator("#photo-upload input[type=file]").set_input_files(str(photo))
            page.locator(f"#photo-upload [aria-label='{photo.name}']").wait_for()
            scores = "#scores-avif [data-testid=markdown]"  # the text alone, not the progress shown over it
            before = page.locator(scores).inner_text() if page.locator(scores).count() else ""
            start = time.perf_counter()
            page.locator("#compress").click()
            page.wait_for_function("""([selector, before]) => { const element = document.querySelector(selector);
                                        return element && element.innerText.includes('semantic mIoU')
                                               && element.innerText !== before; }""", arg=[scores, before])
            seconds.append(time.perf_counter() - start)
        browser.close()
    return seconds


def in_process_round_trips(arrays: list[np.ndarray]) -> tuple[float, list[float]]:
    """Load time and per-photo seconds of the same chain called directly."""
    start = time.perf_counter()
    service = DemoService(load_config(SHAPES_CONFIG), tempfile.mkdtemp())
    load = time.perf_counter() - start
    seconds = []
    for photo in arrays:
        start = time.perf_counter()
        encoded = service.encode(photo, Settings())
        picture = service.decode(encoded, Settings(steps=load_config(SHAPES_CONFIG).decode.num_inference_steps))
        service.scores(photo, picture, encoded.code.label_map)
        for result in service.codecs(photo, encoded.num_bytes):
            service.scores(photo, result.image, encoded.code.label_map)
        seconds.append(time.perf_counter() - start)
    return load, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=8, help="held-out shapes photos")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-app-"))
    arrays = [np.asarray(sample.image) for sample in held_out_samples(args.count + 4)[4:]]  # not the examples
    photos = []
    for index, photo in enumerate(arrays):
        photos.append(folder / f"photo-{index}.png")
        Image.fromarray(photo).save(photos[-1])
    process, url, startup = start_server(folder)
    try:
        browser = browser_round_trips(url, photos, args.chromium)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    load, direct = in_process_round_trips(arrays)
    rows = [["page in Chromium (python -m models.app)", f"{startup:.1f}", f"{statistics.median(browser):.2f}",
             f"{max(browser):.2f}"],
            ["same chain in-process (reference)", f"{load:.1f}", f"{statistics.median(direct):.2f}",
             f"{max(direct):.2f}"]]
    print(f"shapes system, {args.count} held-out 64x64 photos, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs")
    print(format_table(["path", "start-up s", "round trip s (median)", "round trip s (max)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
