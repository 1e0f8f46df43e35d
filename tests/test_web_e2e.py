"""The web page in a real headless Chromium: upload, wait for the verdict, see the overlay.

Runs uvicorn on a free local port in a thread and drives Debian's /usr/bin/chromium through
Playwright (its own browser download cannot work offline; `make test` installs chromium).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from genad.service.app import create_app
from service_helpers import texture

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


TOKEN = "e2e-token-0123456789abcdef"


def _serve(storage: Path, token: str | None = None) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(storage, token=token)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    t0 = time.monotonic()
    while not srv.started:
        assert time.monotonic() - t0 < 20 and t.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(10)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    yield from _serve(tmp_path / "storage")


@pytest.fixture()
def token_server(tmp_path: Path) -> Iterator[str]:
    yield from _serve(tmp_path / "storage", token=TOKEN)


def test_page_inspects_an_upload(server: str, tmp_path: Path) -> None:
    assert os.path.exists(CHROMIUM), "chromium missing: run scripts/ensure-chromium.sh"
    test_img = tmp_path / "scratched part.png"
    Image.fromarray(texture(1, defect=True, size=160)).save(test_img)
    refs = []
    for i in range(3):
        refs.append(tmp_path / f"good{i}.png")
        Image.fromarray(texture(50 + i, size=160)).save(refs[-1])

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            # the detector list is filled from /v1/detectors
            expect(page.locator("#detector option[value=baseline]")).to_have_count(1)
            expect(page.locator("#lmm")).to_contain_text("LMM")
            page.select_option("#detector", "baseline")
            page.set_input_files("#files", str(test_img))
            page.set_input_files("#normals", [str(p) for p in refs])
            expect(page.locator("#files-hint")).to_have_text("scratched part.png")
            page.click("#run")

            expect(page.locator("#decision")).to_have_text("ANOMALOUS", timeout=30_000)
            score = float(page.locator("#score").inner_text())
            assert score > float(page.locator("#threshold").inner_text())
            # image and heatmap layer both loaded, same size, heatmap over the image
            page.wait_for_function(
                "document.getElementById('heatmap').complete && document.getElementById('heatmap').naturalWidth === 160"
            )
            assert page.eval_on_selector("#image", "e => e.naturalWidth") == 160
            assert page.eval_on_selector("#heatmap", "e => getComputedStyle(e).opacity") == "0.5"
            page.fill("#opacity", "80")
            page.dispatch_event("#opacity", "input")
            assert page.eval_on_selector("#heatmap", "e => getComputedStyle(e).opacity") == "0.8"
            page.fill("#opacity", "60")
            page.dispatch_event("#opacity", "input")
            expect(page.locator("#regions li").first).to_contain_text("region 1")
            expect(page.locator("#boxes .box")).not_to_have_count(0)
            # the history lists it
            expect(page.locator("#history li").first).to_contain_text("scratched part.png")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            shot_dir = os.environ.get("GENAD_SCREENSHOT_DIR")
            if shot_dir:  # for a person to look at
                page.screenshot(path=str(Path(shot_dir) / "genad-service.png"), full_page=True)

            # an error from the API is shown, not swallowed
            page.set_input_files("#normals", [])
            page.click("#run")
            expect(page.locator("#status")).to_contain_text("normal references", timeout=15_000)
            assert errors == []
        finally:
            browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000


def _part_and_refs(tmp_path: Path, name: str, seed: int, ref_seed: int) -> tuple[Path, list[Path]]:
    """A defective 160 px texture named `name` and three normal ones, written to tmp_path."""
    test_img = tmp_path / name
    Image.fromarray(texture(seed, defect=True, size=160)).save(test_img)
    refs = []
    for i in range(3):
        refs.append(tmp_path / f"good{i}.png")
        Image.fromarray(texture(ref_seed + i, size=160)).save(refs[-1])
    return test_img, refs


def test_page_keeps_a_model_and_inspects_with_it(server: str, tmp_path: Path) -> None:
    # Fit once from the page ("keep these references as a model"), then pick the stored model
    # instead of uploading references: the history says which model scored the image.
    test_img, refs = _part_and_refs(tmp_path, "part 9.png", 2, 60)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            expect(page.locator("#detector option[value=baseline]")).to_have_count(1)
            page.select_option("#detector", "baseline")
            page.set_input_files("#normals", [str(p) for p in refs])
            page.click("#keep summary")
            page.fill("#model-name", "line 3 golden")
            page.click("#keep-run")
            expect(page.locator("#status")).to_contain_text("kept model line 3 golden", timeout=30_000)
            # the new model is picked, and the references, detector and options are hidden
            assert page.eval_on_selector("#model", "e => e.selectedOptions[0].textContent").startswith("line 3 golden")
            expect(page.locator("#fit-here")).to_be_hidden()
            page.set_input_files("#files", str(test_img))
            page.click("#run")
            expect(page.locator("#decision")).to_have_text("ANOMALOUS", timeout=30_000)
            expect(page.locator("#history li").first).to_contain_text("model line 3 golden")
            # back to references: the fields come back
            page.select_option("#model", "")
            expect(page.locator("#fit-here")).to_be_visible()
            assert errors == []
        finally:
            browser.close()


def test_api_docs_page_renders_without_internet(server: str) -> None:
    # Swagger UI comes from the package (fastapi-offline), so /docs works on an offline station.
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            outside: list[str] = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(server) else None)
            page.goto(server + "/docs")
            expect(page.locator(".opblock-summary-path", has_text="/v1/detect")).to_have_count(
                2, timeout=20_000
            )  # and /v1/detectors
            expect(page.locator(".opblock-summary-path", has_text="/v1/jobs/{job_id}")).not_to_have_count(0)
            assert outside == []
        finally:
            browser.close()


def test_page_with_a_token_asks_for_it_once_and_sends_it(token_server: str, tmp_path: Path) -> None:
    # `genad serve --token`: the page's calls are refused until it has the token; it asks for
    # it, keeps it in the tab (sessionStorage) and sends it with every call, pictures included.
    test_img, refs = _part_and_refs(tmp_path, "part.png", 3, 70)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(token_server + "/")
            expect(page.locator("#login")).to_be_visible()
            expect(page.locator("#status")).to_contain_text("token")
            page.fill("#token", "not-the-token-at-all-0000")
            page.click("#login button")
            expect(page.locator("#status")).to_contain_text("wrong")  # asked again
            expect(page.locator("#login")).to_be_visible()
            page.fill("#token", TOKEN)
            page.click("#login button")
            expect(page.locator("#login")).to_be_hidden()
            expect(page.locator("#detector option[value=baseline]")).to_have_count(1)
            page.select_option("#detector", "baseline")
            page.set_input_files("#files", str(test_img))
            page.set_input_files("#normals", [str(p) for p in refs])
            page.click("#run")
            expect(page.locator("#decision")).to_have_text("ANOMALOUS", timeout=30_000)
            # the pictures come through fetch() with the header, shown as blob URLs
            page.wait_for_function(
                "document.getElementById('heatmap').complete && document.getElementById('heatmap').naturalWidth === 160"
            )
            assert page.eval_on_selector("#image", "e => e.src").startswith("blob:")
            expect(page.locator("#history li")).to_have_count(1)
            # a reload keeps the token (this tab's sessionStorage); the fragment form works too
            page.reload()
            expect(page.locator("#history li")).to_have_count(1)
            expect(page.locator("#login")).to_be_hidden()
            fresh = browser.new_page()
            fresh.goto(token_server + "/#token=" + TOKEN)
            expect(fresh.locator("#history li")).to_have_count(1)
            assert "token" not in fresh.url  # taken out of the address bar
            assert errors == []
        finally:
            browser.close()
