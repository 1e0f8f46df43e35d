"""Stored models of the service (POST/GET/DELETE /v1/models, /v1/detect and jobs with `model`):
fitted once, kept as one model file, scored with and never refitted; hostile requests get a
one-line 4xx, never a 500 or a traceback."""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from genad import registry
from genad.service.app import create_app
from genad.service.store import is_id
from service_helpers import make_mvtec, png, texture

Files = list[tuple[str, tuple[str, bytes, str]]]


def normals(n: int = 4, seed: int = 10) -> Files:
    return [("normals", (f"ref{i}.png", png(texture(seed + i)), "image/png")) for i in range(n)]


def probe_files() -> Files:
    return [
        ("files", ("broken.png", png(texture(1, defect=True)), "image/png")),
        ("files", ("fine.png", png(texture(2)), "image/png")),
    ]


def scores(r: Response) -> list[float]:
    assert r.status_code == 200, r.text
    return [ins["score"] for ins in r.json()["inspections"]]


def one_line_4xx(r: Response, status: int, *words: str) -> str:
    """The answer is `status` with a one-line JSON detail holding `words` (no traceback)."""
    assert r.status_code == status, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, detail
    for w in words:
        assert w in detail, (w, detail)
    return detail


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_mvtec(root / "tiles")
    return root


@pytest.fixture()
def storage(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture()
def client(storage: Path, data: Path) -> Iterator[TestClient]:
    with TestClient(create_app(storage, data_roots=[data])) as c:
        yield c


@pytest.fixture()
def fit_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every fit() of the baseline detector, wherever it happens."""
    cls = registry.get("baseline")
    original = cls.fit
    calls: list[int] = []

    def counted(self: Any, samples: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(list(samples)))
        return original(self, samples, *args, **kwargs)

    monkeypatch.setattr(cls, "fit", counted)
    return calls


def create(c: TestClient, name: str, files: Files | None = None, **form: str) -> Response:
    return c.post(
        "/v1/models", files=normals() if files is None else files, data={"name": name, "detector": "baseline", **form}
    )


def test_model_from_uploads_scores_like_references_and_never_refits(
    client: TestClient, storage: Path, fit_calls: list[int]
) -> None:
    t0 = time.time()
    r = create(client, "line 3 (golden)")
    assert r.status_code == 201, r.text
    m = r.json()
    assert is_id(m["id"]) and m["name"] == "line 3 (golden)" and m["detector"] == "baseline"
    assert m["n_references"] == 4 and m["source"] == {"kind": "upload", "files": 4}
    assert t0 - 1 <= m["created"] <= time.time() + 1
    path = storage / "models" / f"{m['id']}.genad"
    assert path.is_file() and m["size_bytes"] == path.stat().st_size
    assert m["params"]["grid"] == 64 and not {"api_key", "base_url"} & set(m["params"])
    assert m["manifest"]["format"] == "genad-model" and m["manifest"]["references"]["count"] == 4
    assert m["summary"]["detector"] == "baseline" and m["summary"]["references"].startswith("4 fitted")
    assert m["loaded"] is False and {"fit", "total"} <= set(m["timings"])
    assert fit_calls == [4]

    # the same references sent with the request: fitted there, the same scores
    direct = client.post("/v1/detect", files=probe_files() + normals(), data={"detector": "baseline"})
    assert fit_calls == [4, 4]
    used = client.post("/v1/detect", files=probe_files(), data={"model": m["id"], "inline_png": "false"})
    assert scores(used) == pytest.approx(scores(direct), abs=1e-6)
    assert fit_calls == [4, 4]  # the model was not refitted
    body = used.json()
    assert body["model"] == {"id": m["id"], "name": m["name"]}
    assert body["detector"] == "baseline" and body["n_normals"] == 4
    bad, good = body["inspections"]
    assert bad["decision"] is True and good["decision"] is False
    assert bad["model"] == body["model"] and client.get(bad["overlay_url"]).status_code == 200

    # kept in memory: the file is read once, however many requests use it
    library = client.app.state.models  # type: ignore[attr-defined]
    assert scores(client.post("/v1/detect", files=probe_files(), data={"model": m["id"]})) == scores(used)
    assert (library.loads, library.fits, fit_calls) == (1, 1, [4, 4])
    # the detector may be named as long as it is the model's
    r = client.post("/v1/detect", files=probe_files(), data={"model": m["id"], "detector": "baseline"})
    assert r.status_code == 200

    listed = client.get("/v1/models").json()
    assert listed["total"] == 1 and listed["loaded"] == [m["id"]]
    assert listed["models"][0]["id"] == m["id"] and listed["models"][0]["loaded"] is True
    one = client.get(f"/v1/models/{m['id']}").json()
    assert one["file_error"] is None and one["summary"] == m["summary"] and one["size_bytes"] == m["size_bytes"]

    # the history records the model (or none)
    hist = client.get("/v1/inspections", params={"limit": 50}).json()["inspections"]
    assert {i["id"] for i in hist if i["model"] == body["model"]} >= {bad["id"], good["id"]}
    assert [i["model"] for i in hist if i["n_normals"] == 4 and i["model"] is None]  # the direct ones

    # delete: gone, detection with it is a 404, the history keeps its name
    assert client.delete(f"/v1/models/{m['id']}").json() == {"deleted": m["id"]}
    assert not path.exists()
    one_line_4xx(client.get(f"/v1/models/{m['id']}"), 404, "no model")
    one_line_4xx(client.delete(f"/v1/models/{m['id']}"), 404, "no model")
    one_line_4xx(client.post("/v1/detect", files=probe_files(), data={"model": m["id"]}), 404, "no model")
    assert client.get("/v1/models").json() == {**listed, "total": 0, "models": [], "loaded": []}
    assert client.get(f"/v1/inspections/{bad['id']}").json()["model"]["name"] == "line 3 (golden)"


def test_model_from_a_data_root_folder_jobs_and_restart(
    client: TestClient, storage: Path, data: Path, fit_calls: list[int]
) -> None:
    r = client.post("/v1/models", data={"name": "tiles-golden", "detector": "baseline", "folder": "tiles/train/good"})
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["n_references"] == 4 and m["source"] == {"kind": "folder", "folder": "tiles/train/good", "files": 4}
    # the same images uploaded: the same model
    good = sorted((data / "tiles" / "train" / "good").iterdir())
    uploaded = [("normals", (p.name, p.read_bytes(), "image/png")) for p in good]
    twin = create(client, "tiles-uploaded", uploaded).json()
    a = scores(client.post("/v1/detect", files=probe_files(), data={"model": m["id"]}))
    b = scores(client.post("/v1/detect", files=probe_files(), data={"model": twin["id"]}))
    assert a == pytest.approx(b, abs=1e-6)
    # an absolute folder inside the root works too
    r = create(client, "abs", [], folder=str(data / "tiles" / "train" / "good"))
    assert r.status_code == 201, r.text
    assert len(fit_calls) == 3

    # a batch job scores with the model, no refit
    r = client.post("/v1/jobs", json={"kind": "batch", "data_dir": "tiles/test", "model": m["id"]})
    assert r.status_code == 202, r.text
    assert r.json()["request"]["model"] == m["id"] and r.json()["request"]["detector"] == "baseline"
    job = _wait(client, r.json()["id"])
    assert job["status"] == "done", job
    assert job["summary"]["n_samples"] == 6 and job["summary"]["model"] == {"id": m["id"], "name": "tiles-golden"}
    assert job["summary"]["top"][0]["sample_id"].startswith("test/hole")
    assert len(fit_calls) == 3
    # and an evaluation
    r = client.post("/v1/jobs", json={"kind": "evaluate", "data_dir": "tiles", "model": m["id"]})
    job = _wait(client, r.json()["id"])
    assert job["status"] == "done" and job["summary"]["image_auroc"] == pytest.approx(1.0), job
    assert len(fit_calls) == 3
    # a job's model comes with nothing of the request's own
    for extra, word in (
        ({"normal_dir": "tiles/train/good"}, "normal_dir"),
        ({"params": {"grid": 32}}, "params"),
        ({"detector": "embedded"}, "detector"),
    ):
        body = {"kind": "batch", "data_dir": "tiles/test", "model": m["id"], **extra}
        one_line_4xx(client.post("/v1/jobs", json=body), 400, word)
    one_line_4xx(client.post("/v1/jobs", json={"kind": "batch", "data_dir": "tiles", "model": "f" * 32}), 404)

    # a new process on the same storage keeps the models and reads them back
    client.__exit__(None, None, None)
    with TestClient(create_app(storage, data_roots=[data])) as c2:
        assert c2.get("/v1/models").json()["total"] == 3
        assert scores(c2.post("/v1/detect", files=probe_files(), data={"model": m["id"]})) == a
        assert c2.app.state.models.loads == 1  # type: ignore[attr-defined]
    assert len(fit_calls) == 3


def _wait(c: TestClient, job_id: str) -> dict[str, Any]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(job)


def test_hostile_requests_are_refused_with_one_line(client: TestClient, data: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make_mvtec(outside / "tiles")
    os.symlink(outside, data / "link")
    (data / "loose").mkdir()
    os.symlink(outside / "tiles" / "train" / "good" / "000.png", data / "loose" / "escape.png")

    # names
    for bad in (" lead", "trail ", "a/b", "..", "x" * 65, "<script>", "a\nb", "tab\there", "-dash", "semi;colon"):
        one_line_4xx(create(client, bad), 400, "name")
    r = client.post("/v1/models", files=normals(), data={"detector": "baseline"})
    assert r.status_code == 422 and "name" in r.json()["detail"]
    assert create(client, "Ünïcode-名前 1.0_(b)").status_code == 201
    one_line_4xx(create(client, "ünïcode-名前 1.0_(B)"), 409, "already exists")
    one_line_4xx(create(client, "u\u0308nïcode-名前 1.0_(B)"), 409, "already exists")  # ü decomposed
    one_line_4xx(create(client, "x" * 1_000_000), 400, "longer than 64")
    for bad in ("right\u202eleft", "zero\u200bwidth", "nul\x00l"):
        one_line_4xx(create(client, bad), 400, "name")

    # detectors and options, as /v1/detect checks them
    one_line_4xx(create(client, "m", detector="no-such"), 400, "no-such", "baseline")
    one_line_4xx(create(client, "m", detector="ts-iforest"), 400, "not images")
    one_line_4xx(create(client, "m", detector="d" * 100_000), 400, "detector")
    assert len(create(client, "m", detector="d" * 100_000).text) < 300
    one_line_4xx(create(client, "m", params="{grid: 4"), 400, "JSON")
    one_line_4xx(create(client, "m", params="[" * 100_000), 400, "params")
    one_line_4xx(create(client, "m", params="[" * 10_000), 400, "nested too deep")
    one_line_4xx(create(client, "m", params='{"nope": 1}'), 400, "nope")
    one_line_4xx(create(client, "m", params='{"threshold": 5}'), 400, "threshold")
    for key in ("base_url", "api_key", "cache_dir", "threads"):
        one_line_4xx(create(client, "m", params=f'{{"{key}": "x"}}'), 400, key, "server")

    # folders: only under a data root; outside (existing or not) and missing get the same answer
    for bad in (str(outside / "tiles"), "../outside/tiles", "link/tiles/train/good", "/etc", "/no/such/place"):
        one_line_4xx(create(client, "m", [], folder=bad), 404, "not found under the service's data roots")
    one_line_4xx(create(client, "m", [], folder="tiles/nothing-here"), 404, "not found under the service's data roots")
    # paths the file system refuses, a symlink loop, a `~` (literal: not the server's home)
    os.symlink(data / "loop", data / "loop")
    for odd in ("a" * 5000, "x" * 300, "a/" * 2000, "loop/x", "~root", "~nouser/x"):
        r = create(client, "m", [], folder=odd)
        assert r.status_code in (400, 404) and len(r.json()["detail"]) < 400, (odd[:20], r.text[:200])
        r = client.post("/v1/jobs", json={"kind": "batch", "data_dir": odd})
        assert r.status_code in (400, 404), (odd[:20], r.text[:200])
    one_line_4xx(create(client, "m", [], folder="tiles/train/good/000.png"), 400, "not a folder")
    one_line_4xx(create(client, "m", [], folder="loose"), 400, "no images")  # a symlink out is not read
    one_line_4xx(create(client, "m", normals(2), folder="tiles/train/good"), 400, "not both")
    one_line_4xx(create(client, "m", []), 400, "normal references")
    text = [("normals", ("ref.png", b"not an image at all\n" * 5, "image/png"))]
    one_line_4xx(create(client, "m", text), 415, "not a readable image")

    # ids
    for bad in ("0" * 32, "..%2F..%2Fetc", "x" * 300, "ABCDEF" + "0" * 26):
        assert client.get(f"/v1/models/{bad}").status_code == 404
        assert client.delete(f"/v1/models/{bad}").status_code == 404
    one_line_4xx(client.post("/v1/detect", files=probe_files(), data={"model": "x" * 10_000}), 404, "no model")
    one_line_4xx(client.post("/v1/detect", files=probe_files(), data={"model": "../../etc/passwd"}), 404)

    # a model with references, options or another detector in the same request
    mid = client.get("/v1/models").json()["models"][0]["id"]
    one_line_4xx(client.post("/v1/detect", files=probe_files() + normals(2), data={"model": mid}), 400, "references")
    one_line_4xx(
        client.post("/v1/detect", files=probe_files(), data={"model": mid, "params": '{"grid": 8}'}), 400, "params"
    )
    one_line_4xx(
        client.post("/v1/detect", files=probe_files(), data={"model": mid, "detector": "embedded"}), 400, "detector"
    )
    assert client.get("/v1/models").json()["total"] == 1
    assert sorted(p.name for p in (client.app.state.storage_dir / "models").iterdir()) == [f"{mid}.genad"]  # type: ignore[attr-defined]


def test_upload_limits_and_the_number_of_models(tmp_path: Path) -> None:
    big = png(texture(0, size=200)) + bytes(60_000)  # a PNG with trailing bytes, over 0.05 MB
    with TestClient(create_app(tmp_path / "s", max_upload_mb=0.05, max_files=3, max_models=1)) as c:
        one_line_4xx(create(c, "m", normals(4)), 413, "too many files")
        one_line_4xx(create(c, "m", [("normals", ("big.png", big, "image/png"))]), 413, "big.png", "0.05 MB")
        one_line_4xx(create(c, "m", [], folder="tiles"), 403, "--data-root")  # no data root at all
        assert create(c, "first", normals(3)).status_code == 201
        one_line_4xx(create(c, "second", normals(3)), 409, "delete one")
    with TestClient(create_app(tmp_path / "s2", max_pixels=5000)) as c:
        one_line_4xx(create(c, "m", normals(2)), 413, "megapixels")


def test_loaded_models_are_bounded(tmp_path: Path) -> None:
    with TestClient(create_app(tmp_path / "s", model_cache=2)) as c:
        ids = [create(c, f"m{i}", normals(3, seed=20 + 5 * i)).json()["id"] for i in range(3)]
        library = c.app.state.models  # type: ignore[attr-defined]
        for mid in ids:
            assert c.post("/v1/detect", files=probe_files(), data={"model": mid}).status_code == 200
        assert library.loads == 3 and c.get("/v1/models").json()["loaded"] == sorted(ids[1:])
        c.post("/v1/detect", files=probe_files(), data={"model": ids[2]})
        assert library.loads == 3  # still in memory
        c.post("/v1/detect", files=probe_files(), data={"model": ids[0]})
        assert library.loads == 4 and sorted(c.get("/v1/models").json()["loaded"]) == sorted([ids[0], ids[2]])


def _flip_an_array(path: Path) -> None:
    """Rewrite the model file with one byte of one array changed (its checksum then fails)."""
    with zipfile.ZipFile(path) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in parts if n.startswith("arrays/"))
    data = bytearray(parts[name])
    data[-1] ^= 0xFF
    parts[name] = bytes(data)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, b in parts.items():
            z.writestr(n, b)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("damage", ["garbage", "truncated", "checksum", "missing"])
def test_a_damaged_model_file_is_a_clean_409(tmp_path: Path, damage: str) -> None:
    storage = tmp_path / "storage"
    (tmp_path / "data" / "d").mkdir(parents=True)
    with TestClient(create_app(storage)) as c:
        m = create(c, "soon broken").json()
    path = storage / "models" / f"{m['id']}.genad"
    if damage == "garbage":
        path.write_bytes(b"PK\x03\x04 this is not a zip file" * 10)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "checksum":
        _flip_an_array(path)
    else:
        path.unlink()
    with TestClient(create_app(storage, data_roots=[tmp_path / "data"])) as c:
        r = c.post("/v1/detect", files=probe_files(), data={"model": m["id"]})
        detail = one_line_4xx(r, 409, "soon broken", "cannot be loaded", "create it again")
        assert str(storage) not in detail  # no server path in the answer
        one = c.get(f"/v1/models/{m['id']}")
        assert one.status_code == 200 and one.json()["file_error"] and str(storage) not in one.text
        one_line_4xx(c.post("/v1/jobs", json={"kind": "batch", "data_dir": "d", "model": m["id"]}), 409)
        assert c.get("/healthz").status_code == 200
        assert c.delete(f"/v1/models/{m['id']}").status_code == 200
        assert c.get("/v1/models").json()["total"] == 0
