"""The inspection service's HTTP API, through FastAPI's TestClient (no network, no real data)."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from genad import registry
from genad.detector import Detector
from genad.service.app import create_app
from genad.types import Result
from service_helpers import DEFECT, png, texture


@pytest.fixture()
def storage(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture()
def client(storage: Path) -> Iterator[TestClient]:
    with TestClient(create_app(storage)) as c:
        yield c


def few_shot_files(n_refs: int = 4) -> list[tuple[str, tuple[str, bytes, str]]]:
    files = [
        ("files", ("broken.png", png(texture(1, defect=True)), "image/png")),
        ("files", ("fine.png", png(texture(2)), "image/png")),
    ]
    files += [("normals", (f"ref{i}.png", png(texture(10 + i)), "image/png")) for i in range(n_refs)]
    return files


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_detect_few_shot_finds_the_defect_and_serves_overlays(client: TestClient) -> None:
    r = client.post("/v1/detect", files=few_shot_files(), data={"detector": "baseline"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n_normals"] == 4
    bad, good = body["inspections"]
    assert (bad["filename"], good["filename"]) == ("broken.png", "fine.png")
    assert bad["score"] > good["score"]
    assert bad["decision"] is True and good["decision"] is False
    assert bad["threshold"] == pytest.approx(good["threshold"])
    # the strongest region lies on the dark square
    x0, y0, x1, y1 = bad["result"]["regions"][0]["box"]
    dx0, dy0, dx1, dy1 = DEFECT
    assert dx0 <= (x0 + x1) / 2 <= dx1 and dy0 <= (y0 + y1) / 2 <= dy1
    assert bad["result"]["regions"][0]["index"] == 1
    assert {"decode", "detect", "total"} <= set(body["timings"])

    # the overlay comes inline and by URL, the same PNG; the heatmap is a separate layer
    inline = base64.b64decode(bad["overlay_png_base64"])
    served = client.get(bad["overlay_url"])
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.content == inline
    over = decode(inline)
    assert over.shape == (96, 96, 3)
    heat = decode(client.get(bad["heatmap_url"]).content)
    image = decode(client.get(bad["image_url"]).content)
    assert np.array_equal(image, texture(1, defect=True))  # the upload is kept losslessly
    thumb = client.get(bad["thumb_url"])
    assert thumb.headers["content-type"] == "image/jpeg" and decode(thumb.content).shape == (96, 96, 3)
    # the heatmap is hottest (most red) inside the defect
    redness = heat[..., 0].astype(int) - heat[..., 2].astype(int)
    inside = redness[dy0:dy1, dx0:dx1].mean()
    assert inside > redness.mean() + 50


def test_detect_default_detector_zero_shot_batch(client: TestClient) -> None:
    # The default ("embedded") detector, zero-shot over a batch of 4: the odd one out wins.
    files = [("files", (f"{i}.png", png(texture(20 + i, defect=(i == 2))), "image/png")) for i in range(4)]
    r = client.post("/v1/detect", files=files, data={"params": '{"resolution": 128}'})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["detector"] == registry.DEFAULT_DETECTOR
    scores = [ins["score"] for ins in body["inspections"]]
    assert int(np.argmax(scores)) == 2
    assert body["inspections"][2]["overlay_url"]
    # the one decision knob, in normalised units, as on the command line
    results = [ins["result"] for ins in body["inspections"]]
    assert all(0.0 <= x["normalized_score"] <= 1.0 for x in results)
    assert all(x["decision"] == (x["score"] > x["threshold"]) for x in results)
    strict = client.post("/v1/detect", files=files, data={"params": '{"resolution": 128, "threshold": 0.999}'})
    assert strict.status_code == 200, strict.text
    for x, y in zip(results, [ins["result"] for ins in strict.json()["inspections"]]):
        assert y["normalized_score"] == pytest.approx(x["normalized_score"], abs=1e-6)
        assert y["decision"] == (y["normalized_score"] > 0.999) and y["threshold"] > x["threshold"]
        assert y["decision"] or not y["regions"]


def test_history_lists_newest_first_and_survives_restart(storage: Path) -> None:
    with TestClient(create_app(storage)) as c:
        first = c.post("/v1/detect", files=few_shot_files(2), data={"detector": "baseline"}).json()
        ids = [i["id"] for i in first["inspections"]]
        hist = c.get("/v1/inspections", params={"limit": 10}).json()
        assert hist["total"] == 2
        assert {i["id"] for i in hist["inspections"]} == set(ids)
        assert len(c.get("/v1/inspections", params={"limit": 1}).json()["inspections"]) == 1
    # a new process on the same storage keeps everything
    with TestClient(create_app(storage)) as c2:
        hist = c2.get("/v1/inspections").json()
        assert [i["id"] for i in hist["inspections"]][::-1] == ids or {i["id"] for i in hist["inspections"]} == set(ids)
        one = c2.get(f"/v1/inspections/{ids[0]}").json()
        assert one["score"] == first["inspections"][0]["score"]
        assert c2.get(one["overlay_url"]).status_code == 200
        assert c2.delete(f"/v1/inspections/{ids[0]}").status_code == 200
        assert c2.get(f"/v1/inspections/{ids[0]}").status_code == 404
        assert c2.get("/v1/inspections").json()["total"] == 1


def test_unknown_ids_and_assets_are_404(client: TestClient) -> None:
    assert client.get("/v1/inspections/" + "0" * 32).status_code == 404
    assert client.get("/v1/inspections/..%2F..%2Fetc").status_code == 404
    r = client.get("/v1/inspections/" + "0" * 32 + "/overlay.png")
    assert r.status_code == 404 and "no inspection" in r.json()["detail"]
    assert client.get("/v1/inspections/" + "0" * 32 + "/secret.txt").status_code == 422


def test_unknown_detector_is_400_listing_the_available_ones(client: TestClient) -> None:
    r = client.post("/v1/detect", files=few_shot_files(1), data={"detector": "no-such"})
    assert r.status_code == 400
    assert "no-such" in r.json()["detail"] and "baseline" in r.json()["detail"]
    non_image = [n for n in registry.available() if "image" not in registry.get(n).modalities]
    assert non_image  # the time-series, point-cloud and video detectors
    r = client.post("/v1/detect", files=few_shot_files(1), data={"detector": non_image[0]})
    assert r.status_code == 400 and "not images" in r.json()["detail"]


def test_zero_shot_with_one_image_is_400_suggesting_references(client: TestClient) -> None:
    r = client.post(
        "/v1/detect", files=[("files", ("a.png", png(texture(3)), "image/png"))], data={"detector": "baseline"}
    )
    assert r.status_code == 400
    assert "normal references" in r.json()["detail"]


def test_bad_params_are_400(client: TestClient) -> None:
    files = few_shot_files(2)
    r = client.post("/v1/detect", files=files, data={"detector": "baseline", "params": "{grid: 4"})
    assert r.status_code == 400 and "JSON" in r.json()["detail"]
    r = client.post("/v1/detect", files=files, data={"detector": "baseline", "params": '{"grid": 2}'})
    assert r.status_code == 400 and "grid" in r.json()["detail"]
    r = client.post("/v1/detect", files=files, data={"detector": "baseline", "params": '{"nope": 1}'})
    assert r.status_code == 400 and "nope" in r.json()["detail"]
    for bad in ('{"threshold": 5}', '{"threshold": "high"}', '{"raw_threshold": 1e999}', '{"threshold": -0.1}'):
        r = client.post("/v1/detect", files=files, data={"detector": "baseline", "params": bad})
        assert r.status_code == 400 and "threshold" in r.json()["detail"], (bad, r.text)


def test_text_file_named_png_is_415(client: TestClient) -> None:
    r = client.post(
        "/v1/detect", files=[("files", ("x.png", b"just some text\n" * 10, "image/png"))], data={"detector": "baseline"}
    )
    assert r.status_code == 415
    assert "not a readable image" in r.json()["detail"]
    # a real PNG with a misleading name and type is judged by its content and accepted
    files = [("files", ("notes.txt", png(texture(4)), "text/plain"))]
    files += [("normals", (f"n{i}", png(texture(30 + i)), "application/octet-stream")) for i in range(2)]
    assert client.post("/v1/detect", files=files, data={"detector": "baseline"}).status_code == 200


def test_too_large_is_413(tmp_path: Path) -> None:
    big = png(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))  # ~120 kB
    assert len(big) > 100_000
    with TestClient(create_app(tmp_path / "s", max_upload_mb=0.05, max_files=4)) as c:
        r = c.post("/v1/detect", files=[("files", ("big.png", big, "image/png"))], data={"detector": "baseline"})
        assert r.status_code == 413
        assert "0.05 MB" in r.json()["detail"] and "big.png" in r.json()["detail"]
        # a whole body over files x limit is refused before it is parsed
        many = [("files", (f"{i}.png", big, "image/png")) for i in range(3)]
        r = c.post("/v1/detect", files=many, data={"detector": "baseline"})
        assert r.status_code == 413 and "request body" in r.json()["detail"]

        # the same for a chunked upload that announces no length
        def chunks() -> Iterator[bytes]:
            yield (
                b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
                b"Content-Type: image/png\r\n\r\n"
            )
            for _ in range(40):
                yield bytes(10_000)
            yield b"\r\n--xyz--\r\n"

        r = c.post("/v1/detect", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"})
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert r.status_code == 413 and "kB" in r.json()["detail"]
        too_many = [("files", (f"{i}.png", png(texture(i)), "image/png")) for i in range(5)]
        assert c.post("/v1/detect", files=too_many, data={"detector": "baseline"}).status_code == 413
    with TestClient(create_app(tmp_path / "s2", max_pixels=5000)) as c:
        r = c.post("/v1/detect", files=few_shot_files(2), data={"detector": "baseline"})
        assert r.status_code == 413 and "megapixels" in r.json()["detail"]


def test_path_traversal_names_are_display_text_only(tmp_path: Path) -> None:
    storage = tmp_path / "deep" / "storage"
    before = sorted(p for p in tmp_path.rglob("*"))
    with TestClient(create_app(storage)) as c:
        files = [
            ("files", ("../../etc/passwd", png(texture(5, defect=True)), "image/png")),
            ("normals", ("..\\..\\evil.png", png(texture(6)), "image/png")),
            ("normals", ("/tmp/abs.png", png(texture(7)), "image/png")),
        ]
        r = c.post("/v1/detect", files=files, data={"detector": "baseline"})
        assert r.status_code == 200, r.text
        ins = r.json()["inspections"][0]
        assert ins["filename"] == "passwd"
        assert c.get(ins["image_url"]).status_code == 200
    after = sorted(p for p in tmp_path.rglob("*"))
    new = [p for p in after if p not in before]
    assert new and all(p == storage.parent or p.is_relative_to(storage) for p in new)
    assert not any(p.name in ("passwd", "evil.png", "abs.png") for p in after)
    assert not Path("/tmp/abs.png").exists() or Path("/tmp/abs.png").stat().st_mtime < time.time() - 60


def test_detectors_shows_lmm_status_but_never_the_key(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("GENAD_LMM_BASE_URL", "GENAD_LMM_MODEL", "GENAD_LMM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    d = client.get("/v1/detectors").json()
    t0 = time.monotonic()
    while d["image_detectors"] is None:  # null while the detectors are imported at start-up
        assert time.monotonic() - t0 < 60
        time.sleep(0.5)
        d = client.get("/v1/detectors").json()
    assert "baseline" in d["detectors"] and d["default"] == registry.DEFAULT_DETECTOR
    # the page offers only detectors that read images
    assert "baseline" in d["image_detectors"] and set(d["image_detectors"]) <= set(d["detectors"])
    assert all(
        registry.get(n).modalities == ("image",) or "image" in registry.get(n).modalities for n in d["image_detectors"]
    )
    non_image = [n for n in d["detectors"] if "image" not in registry.get(n).modalities]
    assert not set(non_image) & set(d["image_detectors"])
    assert d["lmm"]["configured"] is False and "GENAD_LMM_API_KEY" in d["lmm"]["missing"]
    monkeypatch.setenv("GENAD_LMM_BASE_URL", "https://user:pw-secret@llm.example.com:8443/v1?token=tok-secret")
    monkeypatch.setenv("GENAD_LMM_MODEL", "some-vlm")
    monkeypatch.setenv("GENAD_LMM_API_KEY", "sk-very-secret-key")
    r = client.get("/v1/detectors")
    lmm = r.json()["lmm"]
    assert lmm == {
        "configured": True,
        "host": "llm.example.com:8443",
        "model": "some-vlm",
        "api_key_set": True,
        "missing": [],
    }
    assert "secret" not in r.text


def test_health_docs_and_page(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/v1/detect", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/inspections"} <= set(spec["paths"])
    page = client.get("/")
    assert page.status_code == 200 and 'id="opacity"' in page.text
    assert client.get("/static/app.js").status_code == 200


class _Slow(Detector):
    """Sleeps, so that the test can see whether the event loop stays free meanwhile."""

    zero_shot = True

    def predict(self, samples):  # type: ignore[no-untyped-def]
        time.sleep(1.5)
        return [Result(s.id, score=0.0, decision=False) for s in samples]


def test_detection_does_not_block_the_event_loop(client: TestClient) -> None:
    registry.register("test-slow-h")(_Slow)
    try:
        out: dict[str, int] = {}
        files = [("files", ("a.png", png(texture(8)), "image/png"))]
        t = threading.Thread(
            target=lambda: out.update(
                code=client.post("/v1/detect", files=files, data={"detector": "test-slow-h"}).status_code
            )
        )
        t.start()
        time.sleep(0.4)
        t0 = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        waited = time.perf_counter() - t0
        assert t.is_alive() and waited < 0.5
        t.join()
        assert out["code"] == 200
    finally:
        registry._REGISTERED.pop("test-slow-h", None)
