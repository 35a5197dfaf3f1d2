"""The browser page in headless Chromium (Debian's package, driven by Playwright): upload, boxes, slider."""

from __future__ import annotations

import shutil

import httpx
from playwright.sync_api import sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


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
            # the canvas holds the image at its own size, with boxes drawn on it (coloured pixels at a box edge)
            assert page.evaluate("[canvas.width, canvas.height]") == [320, 200]
            x, y = (int(v) for v in api[0]["bbox"][:2])
            edge = page.evaluate(f"Array.from(canvas.getContext('2d').getImageData({x + 1}, {y + 3}, 1, 1).data)")
            assert edge[:3] != [0, 0, 0] and edge[3] == 255
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            # the slider filters what is shown, exactly as the API filters by score_threshold
            page.locator("#score").fill("0.4")
            assert int(page.locator("#count").inner_text()) == len(strict["detections"])
            assert page.locator("#table tbody tr").count() == len(strict["detections"])
            page.screenshot(path=str(tmp_path / "page_0.4.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000
