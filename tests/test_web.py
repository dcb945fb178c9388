"""`otseg serve`: the Gradio page, tested in-process and end to end in a real headless Chromium.

The browser tests launch the page on a free localhost port with a tiny random-weight model, drive Debian's
Chromium with Playwright (`executable_path`, no `playwright install` download), upload a PNG, type class names,
press Segment and check the overlay the page shows pixel for pixel against `Prediction.overlay()`. They skip, saying
why, where gradio, Playwright or a Chromium binary is missing (`scripts/install_browser_deps.sh` installs them).
No test reaches the internet: Python-side connections and name lookups beyond localhost are refused and recorded,
and Chromium resolves no host names (the page's Google-font links fail at once instead of hanging).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_model
from otseg import cli, web
from otseg.cli import serve as serve_command
from otseg.model_files.otseg_folder import save_pretrained
from otseg.predictor import Predictor
from otseg.web import ELEM_IDS, INSTALL_HINT, build_app, launch, make_segment_fn

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before anything imports gradio

# gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting.*"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated.*"),
]

CLASSES = ["sky", "road", "tree"]
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}
_FONT_HOSTS = {"fonts.googleapis.com", "fonts.gstatic.com"}


# ------------------------------------------------------------------------------------------------ helpers
def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="otseg")
    serve_command.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["serve", *argv])


def _write_png(path: Path, width: int = 96, height: int = 64) -> Path:
    """A picture with structure (sky-blue top, grey bottom, a green blob), so the classes split the pixels."""
    rng = np.random.default_rng(0)
    img = np.zeros((height, width, 3), np.uint8)
    img[: height // 2] = (110, 160, 230)
    img[height // 2 :] = (120, 120, 120)
    img[10:40, 55:85] = (40, 140, 50)
    img = np.clip(img.astype(int) + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find_chromium() -> str | None:
    """$OTSEG_CHROMIUM, else a Chromium/Chrome on PATH (Debian's package installs /usr/bin/chromium)."""
    if os.environ.get("OTSEG_CHROMIUM"):
        return os.environ["OTSEG_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def gr() -> Any:
    return pytest.importorskip(
        "gradio", reason=f"gradio is not installed ({INSTALL_HINT}; .ci/run installs it): web demo not tested"
    )


@pytest.fixture(scope="module")
def outbound() -> Iterator[list[str]]:
    """Refuse and record every Python-side connection or name lookup beyond localhost while the module runs."""
    attempts: list[str] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and str(address[0]) not in _LOCAL_HOSTS:
            attempts.append(f"connect {address}")
            raise OSError(f"test_web_demo: no internet access ({address})")
        return real_connect(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host or "")
        if name not in _LOCAL_HOSTS:
            attempts.append(f"lookup {name}")
            raise socket.gaierror(socket.EAI_NONAME, f"test_web_demo: no internet access ({name})")
        return real_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        yield attempts


@pytest.fixture(scope="module")
def server(gr: Any, outbound: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Predictor]]:
    """The page for a tiny random-weight model, served in this process on a free port; closed at the end."""

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OTSEG_CACHE_DIR", str(tmp_path_factory.mktemp("otseg-cache")))
        predictor = Predictor(make_tiny_model())
        app = build_app(predictor)
        _, url, share_url = launch(app, port=_free_port(), prevent_thread_lock=True, quiet=True)
        try:
            assert share_url is None
            assert urlsplit(url).hostname == "127.0.0.1"
            yield url, predictor
        finally:
            app.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (the system's binary) driven by Playwright; skips, saying why, when either is missing."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install playwright; scripts/install_browser_deps.sh does it)")
    executable = _find_chromium()
    if os.environ.get("OTSEG_CHROMIUM") and not Path(os.environ["OTSEG_CHROMIUM"]).is_file():
        pytest.skip(f"$OTSEG_CHROMIUM={os.environ['OTSEG_CHROMIUM']} is not a file (point it at a Chromium binary)")
    if executable is None or not Path(executable).is_file():
        pytest.skip(
            "no Chromium binary found (looked at $OTSEG_CHROMIUM, chromium/chromium-browser/google-chrome on PATH, "
            "/usr/bin/chromium); install with: apt-get install -y chromium (scripts/install_browser_deps.sh)"
        )
    with sync_playwright() as pw:
        try:
            chromium = pw.chromium.launch(
                executable_path=executable,
                headless=True,
                # No host names resolve: nothing leaves the machine, and font requests fail at once.
                args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1", "--no-sandbox"],
            )
        except PlaywrightError as e:
            pytest.skip(f"Chromium at {executable} could not be started by Playwright: {str(e).splitlines()[0]}")
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, server: tuple[str, Predictor]) -> Iterator[Any]:
    """A fresh tab on the demo page, loaded; records any request it makes beyond the local server."""
    url, _ = server
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    tab.external_requests = []  # type: ignore[attr-defined]
    tab.on(
        "request",
        lambda r: (
            tab.external_requests.append(r.url)  # type: ignore[attr-defined]
            if urlsplit(r.url).hostname not in _LOCAL_HOSTS and not r.url.startswith(("data:", "blob:"))
            else None
        ),
    )
    tab.goto(url, wait_until="domcontentloaded")
    tab.locator(f"#{ELEM_IDS['button']}").wait_for(state="visible")
    try:
        yield tab
    finally:
        context.close()


def _upload(page: Any, path: Path, wait_preview: bool = True) -> None:
    """Pick `path` in the image input and wait until the server has it (and the page previews it, if asked)."""
    with page.expect_response(lambda r: urlsplit(r.url).path.endswith("/upload") and r.request.method == "POST"):
        page.locator(f"#{ELEM_IDS['image']} input[type=file]").set_input_files(str(path))
    if wait_preview:
        page.locator(f"#{ELEM_IDS['image']} img").first.wait_for(state="visible")


def _expect_message(page: Any, text: str) -> None:
    """A message with `text` shows in the page's notifications, and no traceback anywhere."""
    from playwright.sync_api import expect

    expect(page.locator("[data-testid='toast-body']").filter(has_text=text).first).to_be_visible()
    assert "Traceback" not in page.locator("body").inner_text()


# ------------------------------------------------------------------------------------------------ command line
def test_serve_parser_defaults_and_flags() -> None:
    args = _serve_args()
    assert (args.model, args.checkpoint, args.clip, args.preset) == ("demo", None, None, None)
    assert (args.host, args.port, args.share, args.device) == ("127.0.0.1", 7860, False, None)
    assert args.run is serve_command.run
    args = _serve_args("--checkpoint", "m.pt", "--clip", "ViT-B-16.pt", "--preset", "voc12-inductive", "--host",
                       "0.0.0.0", "--port", "8080", "--share", "--device", "cuda")  # fmt: skip
    assert (args.checkpoint, args.clip, args.preset) == ("m.pt", "ViT-B-16.pt", "voc12-inductive")
    assert (args.host, args.port, args.share, args.device) == ("0.0.0.0", 8080, True, "cuda")


def test_serve_without_gradio_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing gradio: one line naming the extra, before any (slow) model loading."""

    def no_model(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model must not be loaded when gradio is missing")

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    monkeypatch.setattr(Predictor, "from_pretrained", no_model)
    with pytest.raises(RuntimeError, match=re.escape(INSTALL_HINT)) as info:
        serve_command.run(_serve_args())
    assert "\n" not in str(info.value)


def test_cli_serve_without_gradio_is_one_line_error(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:

    monkeypatch.setitem(sys.modules, "gradio", None)
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("otseg serve: error:") and INSTALL_HINT in err and "\n" not in err


# The server gets Ctrl+C as a terminal gives it: a test run started in the background by a shell without job
# control (nohup ... &, some CI runners) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
_SERVE_DRIVER = """
import argparse, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from otseg.cli.serve import add_parser
parser = argparse.ArgumentParser(prog="otseg")
add_parser(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.run(args))
"""


def test_serve_command_serves_the_page_until_interrupted(gr: Any, tmp_path: Path) -> None:
    """`otseg serve --checkpoint FOLDER --port P` in its own process: the page answers, Ctrl+C stops it cleanly."""

    save_pretrained(make_tiny_model(), tmp_path / "model")
    port = _free_port()
    env = {**os.environ, "OTSEG_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", _SERVE_DRIVER, "serve", "--checkpoint", str(tmp_path / "model"), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + 60
        # Ready once it says so (gradio's launch() has returned): a Ctrl+C before that is not this test's point.
        while not any("press Ctrl+C to stop" in ln for ln in lines):
            assert proc.poll() is None and time.monotonic() < deadline, f"serve never got ready: {''.join(lines)}"
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10) as r:
            config = json.loads(r.read())
        assert config["title"] == "OTSeg zero-shot segmentation"
        ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
        assert set(ELEM_IDS.values()) <= ids
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve was still running 20 s after Ctrl+C; its output:\n{''.join(lines)}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    out = "".join(lines)
    assert "serving Predictor(model='golden-tiny'" in out and f"http://127.0.0.1:{port}" in out, out
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out


# ------------------------------------------------------------------------------------------------ in-process
def test_build_app_makes_the_page_without_serving(gr: Any) -> None:

    predictor = Predictor(make_tiny_model())
    app = build_app(predictor)
    assert isinstance(app, gr.Blocks)
    by_id = {getattr(b, "elem_id", None): b for b in app.blocks.values()}
    assert set(ELEM_IDS.values()) <= set(by_id)
    assert by_id[ELEM_IDS["classes"]].value == ", ".join(predictor.default_class_names)
    assert isinstance(by_id[ELEM_IDS["image"]], gr.Image) and isinstance(by_id[ELEM_IDS["fractions"]], gr.Label)
    assert by_id[ELEM_IDS["button"]].value == "Segment"
    assert not getattr(app, "is_running", False)


def test_segment_function_result_and_messages(gr: Any, tmp_path: Path) -> None:

    predictor = Predictor(make_tiny_model())
    segment = make_segment_fn(predictor)
    png = _write_png(tmp_path / "photo.png")
    overlay, fractions = segment(str(png), " sky, road ,tree ")
    expected = predictor.predict(png, CLASSES)
    assert list(fractions) == CLASSES and fractions == pytest.approx(expected.fractions())
    assert sum(fractions.values()) == pytest.approx(1.0)
    np.testing.assert_array_equal(np.asarray(overlay), np.asarray(expected.overlay()))

    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not a picture")
    cases = [
        (None, "sky", "Upload an image first"),
        (str(png), "   ", "type at least one class name"),
        (str(png), "sky,,road", "position(s) [1] are empty"),
        (str(png), "sky, road, sky", "'sky' appears twice"),
        (str(bad), "sky, road", "the uploaded file notes.png is not an image that can be read"),
    ]
    for image, text, message in cases:
        with pytest.raises(gr.Error) as info:
            segment(image, text)
        assert message.lower() in info.value.message.lower(), info.value.message
        assert str(tmp_path) not in info.value.message  # server paths are not shown to visitors


def test_unreadable_upload_is_a_page_message(gr: Any, tmp_path: Path) -> None:
    """gradio opens uploads itself before our function runs; the page's image input turns failures into messages."""
    from gradio import Image as GradioImage
    from gradio.data_classes import ImageData  # what gr.Image.preprocess takes (its data_model)

    app = web.build_app(Predictor(make_tiny_model()))
    image_input = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == ELEM_IDS["image"])
    assert type(image_input) is GradioImage  # a plain gr.Image (gradio writes a .pyi beside any subclass's source)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not a picture")
    with pytest.raises(gr.Error, match=r"notes\.png is not an image that can be read"):
        image_input.preprocess(ImageData(path=str(bad), orig_name="notes.png"))
    good = _write_png(tmp_path / "ok.png")
    assert image_input.preprocess(ImageData(path=str(good), orig_name="ok.png")) == str(good)
    assert image_input.preprocess(None) is None
    assert not Path(web.__file__).with_suffix(".pyi").exists()


# ------------------------------------------------------------------------------------------------ browser
def test_browser_upload_segment_shows_overlay_and_fractions(
    page: Any, server: tuple[str, Predictor], outbound: list[str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    url, predictor = server
    png = _write_png(tmp_path / "photo.png")
    classes = page.locator(f"#{ELEM_IDS['classes']} textarea")
    expect(classes).to_have_value(", ".join(predictor.default_class_names))  # prefilled with the model's classes

    _upload(page, png)
    classes.fill(", ".join(CLASSES))
    page.locator(f"#{ELEM_IDS['button']}").click()

    shown = page.locator(f"#{ELEM_IDS['overlay']} img").first
    shown.wait_for(state="visible")
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=shown.element_handle())
    expected = predictor.predict(png, CLASSES)
    want = expected.overlay().convert("RGB")
    assert shown.evaluate("el => [el.naturalWidth, el.naturalHeight]") == list(want.size)

    # The file the page shows is exactly the overlay with its legend.
    src = shown.get_attribute("src")
    assert src
    response = page.request.get(urljoin(url, src))
    assert response.ok, response.status
    served = Image.open(io.BytesIO(response.body())).convert("RGB")
    np.testing.assert_array_equal(np.asarray(served), np.asarray(want))

    # ... and the browser really paints it: a screenshot of the element is a picture, not a blank box.
    painted = np.asarray(Image.open(io.BytesIO(shown.screenshot())).convert("RGB")).astype(float)
    assert painted.shape[0] > 50 and painted.shape[1] > 50
    assert painted.std() > 10

    # The fractions list names every class with its share (percent, rounded).
    fractions = page.locator(f"#{ELEM_IDS['fractions']}")
    for name in CLASSES:
        expect(fractions).to_contain_text(name)
    text = fractions.inner_text()
    shares = expected.fractions()
    assert text.split("\n")[1].strip() == max(shares, key=shares.__getitem__)  # the heading names the largest class
    percents = [float(p) for p in re.findall(r"(\d+(?:\.\d+)?)\s*%", text)]
    assert len(percents) == len(CLASSES)
    assert sorted(percents, reverse=True) == pytest.approx(sorted((100 * v for v in shares.values()), reverse=True),
                                                           abs=1.0)  # fmt: skip
    assert "Traceback" not in page.locator("body").inner_text()
    assert outbound == [], f"the server tried to reach the internet: {outbound}"
    # The page itself only asks for web fonts elsewhere (which fail at once here: no host names resolve).
    assert all(urlsplit(u).hostname in _FONT_HOSTS for u in page.external_requests), page.external_requests


def test_browser_shows_messages_for_bad_input(
    page: Any, server: tuple[str, Predictor], outbound: list[str], tmp_path: Path
) -> None:
    classes = page.locator(f"#{ELEM_IDS['classes']} textarea")
    button = page.locator(f"#{ELEM_IDS['button']}")

    button.click()  # no image yet
    _expect_message(page, "Upload an image first.")

    _upload(page, _write_png(tmp_path / "photo.png"))
    classes.fill("sky, road, sky")
    button.click()
    _expect_message(page, "Class name 'sky' appears twice")

    classes.fill("sky,,road")
    button.click()
    _expect_message(page, "are empty")

    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not a picture")
    _upload(page, bad, wait_preview=False)  # the page cannot preview it, but the server has it
    classes.fill("sky, road")
    button.click()
    _expect_message(page, "notes.png is not an image that can be read")

    assert page.locator(f"#{ELEM_IDS['overlay']} img").count() == 0  # nothing was segmented
    assert outbound == [], f"the server tried to reach the internet: {outbound}"
