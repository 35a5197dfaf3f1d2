"""The browser page in headless Chromium (Debian's package, driven by Playwright): upload, boxes, slider."""

from __future__ import annotations

import base64
import shutil

import httpx
import numpy as np
import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: the first colours of the page's palette (app.js COLORS), indexed by category id modulo its length (14)
BOX_COLOURS = [(0xE6, 0x19, 0x4B), (0x3C, 0xB4, 0x4B), (0x43, 0x63, 0xD8), (0xF5, 0x82, 0x31), (0x91, 0x1E, 0xB4),
               (0x46, 0xF0, 0xF0), (0xF0, 0x32, 0xE6), (0xBC, 0xF6, 0x0C), (0xFA, 0xBE, 0xBE), (0x00, 0x80, 0x80),
               (0x9A, 0x63, 0x24), (0x80, 0x00, 0x00), (0x80, 0x80, 0x00), (0x00, 0x00, 0x75)]


def test_page_draws_as_many_boxes_as_the_api_returns(serve, photo_files, tmp_path):
    image = photo_files[0]
    with serve() as url, sync_playwright() as pw:
        api = httpx.post(f"{url}/v1/detect", content=image.read_bytes()).json()["detections"]
        strict = httpx.post(f"{url}/v1/detect", params={"score_threshold": 0.4}, content=image.read_bytes()).json()
        assert len(api) > len(strict["detections"]) > 0, "pick a threshold that hides some boxes"
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/")
            page.wait_for_function("document.getElementById('model').textContent.includes('efficientdet_d0')")
            assert page.locator("#score").input_value() == "0.25"
            page.set_input_files("#file", str(image))
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            shown = int(page.locator("#count").inner_text())
            assert shown == len(api) == page.locator("#table tbody tr").count()
            assert page.locator("#canvas").get_attribute("data-boxes") == str(len(api))
            first = page.locator("#table tbody tr").first.locator("td").nth(1).inner_text()
            assert first == api[0]["category_name"]
            # the canvas shows the image (scaled to the panel, same aspect) with the best box drawn in its colour
            scale = float(page.locator("#canvas").get_attribute("data-scale"))
            width, height = page.evaluate("[canvas.width, canvas.height]")
            assert abs(width - 320 * scale) <= 1 and abs(height - 200 * scale) <= 1 and scale > 1
            x, y, w, h = api[0]["bbox"]
            px, py = round((x + w) * scale), round((y + h / 2) * scale)  # the middle of its right edge
            rgb = page.evaluate(f"Array.from(canvas.getContext('2d').getImageData({px - 1}, {py}, 1, 1).data)")[:3]
            assert np.abs(np.array(rgb) - BOX_COLOURS[api[0]["category_id"] % len(BOX_COLOURS)]).max() <= 40, rgb
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            # the slider filters what is shown, exactly as the API filters by score_threshold
            page.locator("#score").fill("0.4")
            assert int(page.locator("#count").inner_text()) == len(strict["detections"])
            assert page.locator("#table tbody tr").count() == len(strict["detections"])
            page.screenshot(path=str(tmp_path / "page_0.4.png"), full_page=True)
            # dropping a file on the drop zone runs the same path (a second image, a fresh drawing)
            other = photo_files[1]
            other_api = httpx.post(f"{url}/v1/detect", params={"score_threshold": 0.4},
                                   content=other.read_bytes()).json()["detections"]
            page.evaluate("document.body.dataset.state = 'idle'")
            page.evaluate("""([b64, name]) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const data = new DataTransfer();
                data.items.add(new File([bytes], name, { type: "image/png" }));
                document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: data }));
            }""", [base64.b64encode(other.read_bytes()).decode(), other.name])
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            assert page.evaluate("[canvas.width / canvas.height]")[0] == pytest.approx(150 / 260, abs=0.01)
            assert len(other_api) > 0 and int(page.locator("#count").inner_text()) == len(other_api)  # slider: 0.4
            assert not errors, errors
        finally:
            browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000


def voc_colour(i: int) -> tuple[int, int, int]:
    """The mask PNG's palette colour of class ``i`` (efficientdet.masks.voc_palette)."""
    from efficientdet.masks import voc_palette

    return tuple(voc_palette()[3 * i : 3 * i + 3])


def test_page_overlays_the_mask_of_a_segmentation_model(seg_weights, session_photo_files, tmp_path):
    import io

    from PIL import Image

    from efficientdet.serve import ServeSettings, build_detector, create_app

    from .conftest import thread_server

    image = session_photo_files[0]  # 320 x 200
    app = create_app(build_detector(str(seg_weights)), ServeSettings())
    with thread_server(app) as url, sync_playwright() as pw:
        api = httpx.post(f"{url}/v1/segment", content=image.read_bytes()).json()
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(api["mask"]))))
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/")
            page.wait_for_function("document.body.dataset.task === 'segment'")
            assert page.locator("#show-mask").is_visible() and page.locator("#show-mask").is_checked()
            assert not page.locator("#score").is_visible() and not page.locator("#table").is_visible()
            page.set_input_files("#file", str(image))
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            assert page.locator("#canvas").get_attribute("data-mask") == "on"
            rows = page.locator("#classes tbody tr")
            assert rows.count() == len(api["classes"]) >= 2
            assert [rows.nth(i).locator("td").nth(1).inner_text() for i in range(rows.count())] == \
                [c["name"] for c in api["classes"]]
            page.screenshot(path=str(tmp_path / "mask_on.png"), full_page=True)
            scale = float(page.locator("#canvas").get_attribute("data-scale"))
            # a pixel inside a region of one foreground class, and one inside the background
            points = {}
            for want in (1, 0):
                ys, xs = np.nonzero((mask[1:-1, 1:-1] == want) & (mask[:-2, 1:-1] == want) & (mask[2:, 1:-1] == want)
                                    & (mask[1:-1, :-2] == want) & (mask[1:-1, 2:] == want))
                assert len(xs), f"no inner pixel of class {want}"
                points[want] = (int(xs[len(xs) // 2]) + 1, int(ys[len(ys) // 2]) + 1)

            def rgb(x: int, y: int) -> np.ndarray:
                px, py = int((x + 0.5) * scale), int((y + 0.5) * scale)
                return np.array(page.evaluate(
                    f"Array.from(canvas.getContext('2d').getImageData({px}, {py}, 1, 1).data)")[:3], float)

            with_mask = {k: rgb(*xy) for k, xy in points.items()}
            page.locator("#show-mask").uncheck()  # the toggle redraws the image alone
            assert page.locator("#canvas").get_attribute("data-mask") == "off"
            plain = {k: rgb(*xy) for k, xy in points.items()}
            page.screenshot(path=str(tmp_path / "mask_off.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    # the class colour blended at half opacity over the image; the background untouched
    np.testing.assert_allclose(with_mask[1], 0.5 * plain[1] + 0.5 * np.array(voc_colour(1)), atol=3)
    assert np.abs(with_mask[0] - plain[0]).max() <= 1
    assert np.abs(with_mask[1] - plain[1]).max() > 20


def test_page_of_a_joint_model_draws_boxes_and_the_mask(joint_weights, session_photo_files, tmp_path):
    from efficientdet.serve import ServeSettings, build_detector, create_app

    from .conftest import thread_server

    image = session_photo_files[1]
    with thread_server(create_app(build_detector(str(joint_weights)), ServeSettings())) as url, \
            sync_playwright() as pw:
        api = httpx.post(f"{url}/v1/segment", content=image.read_bytes()).json()
        assert api["detections"] and len(api["classes"]) >= 2
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/")
            page.wait_for_function("document.body.dataset.task === 'detect,segment'")
            assert page.locator("#score").is_visible() and page.locator("#show-mask").is_checked()
            page.set_input_files("#file", str(image))
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            canvas = page.locator("#canvas")
            assert canvas.get_attribute("data-mask") == "on"
            shown = str(len(api["detections"]))  # the page's slider starts at the API's default threshold
            assert canvas.get_attribute("data-boxes") == page.locator("#count").inner_text() == shown
            assert page.locator("#classes tbody tr").count() == len(api["classes"])
            page.screenshot(path=str(tmp_path / "joint.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
