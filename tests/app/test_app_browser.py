"""The web app in a real headless browser (Debian's Chromium, driven by playwright): upload, paint, run, download.

Chromium comes from the Debian packages (`.ci/run` installs it); playwright only drives it (its own browser
download is never used). The test skips, saying why, only when no Chromium is installed.
"""
from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt)")

CHROMIUM = os.environ.get("MSBD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found: apt-get install chromium "
                                                         "(.ci/run installs it), or set MSBD_CHROMIUM=PATH")


@pytest.fixture(scope="module")
def page(app_server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page = context.new_page()
        page.goto(app_server.url + "/")
        playwright.expect(page.locator("#model")).to_have_text("models: toy")
        yield page
        browser.close()


def _input_png(tmp_path) -> tuple[str, np.ndarray]:
    """A 256 x 256 toy scene as the user's file."""
    from experiments.common import toy_case
    image = toy_case(3, 256).image
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    return str(path), image


def _painted_pixels(page) -> int:
    return page.evaluate("""() => { const c = document.getElementById('mask-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }""")


def test_upload_paint_run_and_download(page, app_server, tmp_path):
    expect = playwright.expect
    path, image = _input_png(tmp_path)
    # 1. Upload and paint a stroke across the middle with the brush, then erase a bit of it
    page.set_input_files("#image-file", path)
    expect(page.locator("#message")).to_have_text("image loaded")
    expect(page.locator("#editor")).to_be_visible()
    box = page.locator("#mask-canvas").bounding_box()
    page.locator("#brush-size").fill("60")
    page.mouse.move(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.65, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    painted = _painted_pixels(page)
    assert painted > 0.02 * 256 * 256
    page.check("input[value=eraser]")
    page.mouse.click(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.5)
    assert 0 < _painted_pixels(page) < painted
    # 2. Prompt and knobs, run; progress shows, then the candidates, stages and result
    page.fill("#prompt", "a red star")
    page.fill("#batch", "2")
    page.fill("#repaint_steps", "0")
    page.click("#run")
    expect(page.locator("#progress")).to_be_visible()
    expect(page.locator("#results")).to_be_visible(timeout=120_000)
    expect(page.locator("#message")).to_contain_text("done in")
    captions = page.locator("#candidates figcaption").all_inner_texts()
    assert len(captions) == 2 and all("CLIP" in c for c in captions) and sum("(kept)" in c for c in captions) == 1
    stages = page.locator("#stages figcaption").all_inner_texts()
    assert stages[0].startswith("first: 128x128") and len(stages) >= 2
    assert page.evaluate("document.getElementById('compare-output').naturalWidth") == 256
    page.locator("#zoom").fill("4")
    assert page.evaluate("document.getElementById('compare-output').style.width") == "400%"
    scroll = page.evaluate("[...document.querySelectorAll('.pane')].map(p => [p.scrollLeft, p.clientWidth])")
    assert scroll[0] == scroll[1] and scroll[0][0] > scroll[0][1]    # both at the stroke's centre, not the corner
    # 3. Download: the PNG with its provenance; outside the painted mask it is the input, inside it is not
    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / "download.png"
    download.value.save_as(saved)
    out = Image.open(saved)
    assert out.text["prompt"] == "a red star" and out.text["seed"] == "0"
    assert {"msbd_config", "weights_sha256"} <= set(out.text)
    (job,) = (app_server.out / "jobs").glob(download.value.suggested_filename.split("_")[1][:8] + "*")
    mask = np.asarray(Image.open(job / "mask.png").convert("L")) >= 128
    pixels = np.asarray(out.convert("RGB"))
    assert 0.02 * mask.size < mask.sum() < 0.3 * mask.size
    assert np.array_equal(pixels[~mask], image[~mask]) and not np.array_equal(pixels[mask], image[mask])


def test_bad_upload_and_bad_setting_show_one_message_and_write_nothing(page, app_server):
    before = app_server.files()
    page.set_input_files("#image-file", files=[{"name": "broken.png", "mimeType": "image/png",
                                                "buffer": b"\x89PNG\r\n\x1a\n not really"}])
    message = page.locator("#message.error")
    playwright.expect(message).to_contain_text("'broken.png'")
    assert "\n" not in message.inner_text() and str(app_server.out) not in message.inner_text()
    buffer = io.BytesIO()
    Image.new("L", (10, 10), 255).save(buffer, "PNG")
    page.set_input_files("#mask-file", files=[{"name": "small.png", "mimeType": "image/png",
                                               "buffer": buffer.getvalue()}])
    playwright.expect(message).to_have_text("mask 'small.png' is 10x10 (WxH) but the image is 256x256")
    page.fill("#margin", "0.5")
    page.click("#run")
    playwright.expect(message).to_have_text("invalid setting: margin must be >= 1, got 0.5")
    page.fill("#margin", "1.2")
    page.click("#mask-clear")
    page.click("#run")
    playwright.expect(message).to_contain_text("the mask is empty")
    # a good mask file becomes the brush layer (and is not kept)
    square = np.zeros((256, 256), np.uint8)
    square[64:128, 100:164] = 255
    buffer = io.BytesIO()
    Image.fromarray(square).save(buffer, "PNG")
    page.set_input_files("#mask-file", files=[{"name": "square.png", "mimeType": "image/png",
                                               "buffer": buffer.getvalue()}])
    playwright.expect(page.locator("#message")).to_have_text("mask loaded: paint or erase to change it")
    assert _painted_pixels(page) == 64 * 64
    assert app_server.files() == before


def test_cancel_button_stops_the_run(page, app_server, tmp_path):
    path, _ = _input_png(tmp_path)
    page.set_input_files("#image-file", path)
    playwright.expect(page.locator("#message")).to_have_text("image loaded")
    box = page.locator("#mask-canvas").bounding_box()
    page.check("input[value=brush]")
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.fill("#prompt", "a blue circle")
    page.fill("#batch", "5")
    page.fill("#repaint_steps", "100")            # 203 UNet calls: long enough to cancel
    page.click("#run")
    playwright.expect(page.locator("#step-label")).to_contain_text("/203")
    page.click("#cancel")
    playwright.expect(page.locator("#message")).to_have_text("cancelled; nothing was written")
    assert page.is_enabled("#run") and not page.is_enabled("#cancel")
    done = int(page.inner_text("#step-label").split("/")[0])
    assert done < 203
