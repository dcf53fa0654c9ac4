"""``python -m models.app`` served on 127.0.0.1 and driven by headless Chromium (Debian's package,
through Playwright): a shapes photo round-trips, the byte count on the page is the size of the
downloaded ``.sem`` file, bad uploads get a message and the page keeps working, and the server
writes nothing outside its temporary folder.

``SCREENSHOT=docs/app.png python -m pytest tests/test_app_browser.py`` also saves the page as the
README shows it.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.bitstream import decode_code
from models.quickstart.shapes import held_out_samples

playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (see .ci/run)")
REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# As root, on a machine without network: no sandbox, and no background connections to fail.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install "
                                                                      f"chromium; .ci/run does)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(url: str, server: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"nothing served at {url} after {seconds} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free port, its working directory and temporary directory fresh and watched."""
    root = tmp_path_factory.mktemp("app-server")
    workdir, tmpdir = root / "cwd", root / "tmp"
    workdir.mkdir()
    tmpdir.mkdir()
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "2"}
    log = open(root / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "models.app", "--port", str(port)], cwd=workdir, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/", process)
        yield {"url": f"http://127.0.0.1:{port}/", "process": process, "workdir": workdir, "tmpdir": tmpdir,
               "log": root / "server.log", "root": root}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def page(server):
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        tab.set_default_timeout(60_000)
        tab.goto(server["url"])
        tab.locator("#compress").wait_for()
        yield tab
        browser.close()


def upload(page, element_id: str, path: Path) -> None:
    """Put ``path`` into a file field, first clearing the file it holds (as a person would)."""
    clear = page.locator(f"#{element_id} button[aria-label=Clear]")
    if clear.count():
        clear.click()
    page.locator(f"#{element_id} input[type=file]").set_input_files(str(path))
    page.locator(f"#{element_id} [aria-label='{path.name}']").wait_for()  # the uploaded file is listed


def shown_size(page) -> str:
    return page.locator("#sem-size textarea, #sem-size input").first.input_value()


def shown_caption(page) -> str:
    return page.locator("#caption textarea, #caption input").first.input_value()


def wait_for_size_change(page, before: str) -> str:
    page.wait_for_function("""before => { const e = document.querySelector('#sem-size textarea, #sem-size input');
                                          return e && e.value.includes('bytes') && e.value !== before; }""",
                           arg=before)
    return shown_size(page)


def test_a_shapes_photo_round_trips_and_the_download_is_the_size_shown(page, server, tmp_path):
    photo = tmp_path / "held-out-shapes.png"
    Image.fromarray(np.asarray(held_out_samples(8)[7].image)).save(photo)
    upload(page, "photo-upload", photo)
    start = time.perf_counter()
    page.locator("#compress").click()
    size = wait_for_size_change(page, shown_size(page))
    page.locator("#result-ours img").wait_for()
    page.locator("#scores-avif").get_by_text("semantic mIoU").wait_for()
    print(f"round trip in the browser: {time.perf_counter() - start:.1f} s")
    num_bytes = int(re.match(r"(\d+) bytes", size).group(1))
    with page.expect_download() as download:
        page.locator("#sem-download a[download]").click()
    data = Path(download.value.path()).read_bytes()
    assert len(data) == num_bytes
    code = decode_code(data)
    assert code.caption == shown_caption(page)
    assert (code.width, code.height) == (64, 64)
    for name in ("ours", "jpeg", "webp", "avif"):
        assert "PSNR" in page.locator(f"#scores-{name}").inner_text()
    assert page.locator("#legend").get_by_text("background").count() == 1
    if os.environ.get("SCREENSHOT"):
        page.screenshot(path=os.environ["SCREENSHOT"], full_page=True)
    (server["root"] / "downloaded.sem").write_bytes(data)


def test_bad_uploads_get_a_message_and_the_page_keeps_working(page, server, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("a text file renamed .png\n")
    upload(page, "photo-upload", not_an_image)
    page.locator("#compress").click()
    page.get_by_text("notes.png: not an image, or a format Pillow cannot read").wait_for()
    corrupt = tmp_path / "corrupt.sem"
    corrupt.write_bytes(b"SEM" + bytes(40))
    upload(page, "sem-upload", corrupt)
    page.locator("#decode-sem").click()
    page.get_by_text("corrupt.sem: not a valid .sem file").wait_for()
    # Still serving: the file downloaded by the first test decodes from an upload.
    good = server["root"] / "downloaded.sem"
    if not good.exists():
        pytest.skip("needs the round-trip test first")
    upload(page, "sem-upload", good)
    page.locator("#decode-sem").click()
    page.locator("#scores-ours").get_by_text("no photo").wait_for()  # decoded from the file alone
    assert shown_size(page).startswith(f"{good.stat().st_size} bytes")
    assert decode_code(good.read_bytes()).caption == shown_caption(page)
    assert server["process"].poll() is None
    assert "request refused: notes.png: not an image" in server["log"].read_text()
    assert "Traceback" not in server["log"].read_text()


def test_the_server_writes_only_into_its_temporary_folder(page, server):
    assert list(server["workdir"].iterdir()) == []  # nothing in the working directory
    ours = [p.name for p in server["tmpdir"].iterdir()]
    assert len(ours) == 1 and ours[0].startswith("semantic-compression-app-"), ours


def test_stopping_the_server_removes_its_temporary_folder(page, server):
    server["process"].send_signal(signal.SIGTERM)  # as a service manager stops it
    assert server["process"].wait(timeout=60) == 0
    assert list(server["tmpdir"].iterdir()) == [] and list(server["workdir"].iterdir()) == []
