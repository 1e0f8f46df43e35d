"""Hostile requests against the REAL service: `genad serve` as a child process on a free
loopback port, driven over HTTP (no TestClient), with a token, data roots and a models folder.

For every declared option of the image detectors a bounded set of bad values (wrong type,
NaN/Infinity/1e308, a huge integer, a long text, deep nesting), bad query numbers, bad ids and
paths, folders outside the data roots, backbones that are not the server's, deep and large
JSON: never a 500, the connection stays usable (the same socket answers the next request), every
message is one readable line without the server's paths. Then the token (missing, wrong,
right; the page's routes stay public) and the storage lock (a second `genad serve` on the same
storage exits with one line, the first keeps serving and its running job is left alone).
Loopback only; bounded loops.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from genad import registry
from genad.service.inspector import SERVER_ONLY_PARAMS, request_options
from genad.service.store import Job, Store
from service_helpers import make_mvtec, png, texture

TOKEN = "hardening-token-4f1c2e9a7b"
IMAGE_DETECTORS = ("baseline", "embedded", "lmm", "lmm+embedded")
NOT_AN_IMAGE = b"this is not an image\n" * 4

# The child registers a slow detector (0.4 s an image, one at a time) so that a job is still
# running when a second service tries the same storage; the rest is the real `genad serve`.
CHILD = """
import sys, time
from genad import registry
from genad.detector import Detector
from genad.types import Result

class Slow(Detector):
    zero_shot = True
    chunk_size = 1
    def predict(self, samples):
        time.sleep(0.4)
        return [Result(s.id, score=1.0, decision=False) for s in samples]

registry.register("test-slow")(Slow)
from genad.cli.main import main
main(sys.argv[1:])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    proc: subprocess.Popen
    port: int
    storage: Path
    data: Path
    outside: Path
    models: Path
    log: Path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    base = tmp_path_factory.mktemp("hardening")
    data, outside, models, storage = base / "data", base / "outside", base / "models", base / "storage"
    make_mvtec(data / "tiles", n_train=3, n_good=3, n_bad=1)
    make_mvtec(outside / "tiles", n_train=1, n_good=1, n_bad=1)
    (data / "slow").mkdir()
    for i in range(14):
        Image.fromarray(texture(500 + i, size=32)).save(data / "slow" / f"{i:02d}.png")
    os.symlink(outside, data / "escape")
    os.symlink(data / "loop", data / "loop")
    models.mkdir()
    (models / "tiny.onnx").write_bytes(b"not really onnx")  # offered by name; never loaded here
    port = free_port()
    log = base / "service.log"
    env = {**os.environ, "GENAD_SERVICE_TOKEN": TOKEN, "GENAD_THREADS": "1"}
    for k in ("GENAD_LMM_BASE_URL", "GENAD_LMM_MODEL", "GENAD_LMM_API_KEY", "OPENAI_API_KEY"):
        env.pop(k, None)
    cmd = [sys.executable, "-c", CHILD, "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--storage", str(storage), "--data-root", str(data), "--models-dir", str(models)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    svc = Service(proc, port, storage, data, outside, models, log)
    try:
        t0 = time.monotonic()
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() - t0 < 60, "the service did not answer within 60 s"
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        while Client(svc).get("/v1/detectors")[1]["image_detectors"] is None:  # still importing them
            assert time.monotonic() - t0 < 90, "the detectors were not imported within 90 s"
            time.sleep(0.3)
        yield svc
    finally:
        proc.terminate()  # by its pid: only the process this fixture started
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    text = log.read_text(errors="replace")
    assert TOKEN not in text  # the token never reaches the log
    assert "unhandled error" not in text and '" 500 ' not in text, text[-3000:]


class Client:
    """One keep-alive connection; every answer is checked: no 500, a usable connection, JSON
    errors of one readable line without the server's paths."""

    def __init__(self, svc: Service, token: str | None = TOKEN) -> None:
        self.svc = svc
        self.token = token
        self.conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=60)
        self.calls = 0

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, http.client.HTTPResponse]:
        h = dict(headers or {})
        if self.token is not None and "Authorization" not in h:
            h["Authorization"] = f"Bearer {self.token}"
        if content_type:
            h["Content-Type"] = content_type
        before = self.conn.sock
        self.conn.request(method, path, body=body, headers=h)  # raises if the last answer closed it
        r = self.conn.getresponse()
        raw = r.read()
        self.calls += 1
        where = f"{method} {path[:120]}"
        assert r.status != 500 and r.status < 500, (where, r.status, raw[:300])
        assert not r.will_close, (where, "the service closed the connection")
        assert before is None or self.conn.sock is before, (where, "a new connection was needed")
        value: Any = raw
        if r.getheader("content-type", "").startswith("application/json"):
            value = json.loads(raw)
            if r.status >= 400:
                detail = value.get("detail")
                assert isinstance(detail, str) and detail, (where, value)
                assert "\n" not in detail and len(detail) < 1500, (where, detail[:300])
                assert "Traceback" not in detail and "internal error" not in detail, (where, detail)
                for secret in (str(self.svc.storage), str(self.svc.models), str(self.svc.data), TOKEN):
                    assert secret not in detail, (where, detail)
        return r.status, value, r

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        status, value, _ = self.call("GET", path, **kw)
        return status, value

    def json(self, method: str, path: str, payload: Any) -> tuple[int, Any]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        status, value, _ = self.call(method, path, body=body, content_type="application/json")
        return status, value

    def form(
        self, path: str, fields: dict[str, str], files: list[tuple[str, str, bytes]] | None = None
    ) -> tuple[int, Any]:
        boundary = uuid.uuid4().hex
        out = b""
        for k, v in fields.items():
            out += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode()
            out += v.encode("utf-8", "surrogatepass") + b"\r\n"
        for field, name, data in files or []:
            out += (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                    "Content-Type: image/png\r\n\r\n"
                ).encode()
                + data
                + b"\r\n"
            )
        out += f"--{boundary}--\r\n".encode()
        status, value, _ = self.call("POST", path, body=out, content_type=f"multipart/form-data; boundary={boundary}")
        return status, value

    def detect(self, detector: str, params: Any, image: bytes = NOT_AN_IMAGE) -> tuple[int, Any]:
        text = params if isinstance(params, str) else json.dumps(params)
        return self.form("/v1/detect", {"detector": detector, "params": text}, [("files", "a.png", image)])


@pytest.fixture()
def client(service: Service) -> Client:
    return Client(service)


def deep(levels: int) -> Any:
    v: Any = 1
    for _ in range(levels):
        v = {"a": v}
    return v


# -- options ------------------------------------------------------------------------------------
HOSTILE_VALUES: list[Any] = [
    "abc",  # text where a number or a choice goes
    {"x": 1},  # an object where a value goes
    [1, "a", None],
    float("nan"),
    float("inf"),
    -float("inf"),
    1e308,
    10**30,
    -(10**30),
    "x" * 5000,
    deep(6),
]


def test_every_declared_option_refuses_hostile_values(client: Client) -> None:
    # The file is not an image: a value that happens to be valid gets 415 (after the options
    # were checked), so nothing is ever scored here; a bad one must be a 400 first.
    status, d = client.get("/v1/detectors")
    assert status == 200 and set(IMAGE_DETECTORS) <= set(d["image_detectors"])
    seen = 0
    for name in IMAGE_DETECTORS:
        cls = registry.get(name)
        allowed = request_options(cls)
        for option in allowed:
            for value in HOSTILE_VALUES:
                status, body = client.detect(name, {option: value})
                assert status in (400, 415), (name, option, repr(value)[:40], status, body)
                seen += 1
        # an unknown option: 400 listing the valid ones
        status, body = client.detect(name, {"no_such_option": 1})
        assert status == 400 and "no_such_option" in body["detail"]
        assert all(o in body["detail"] for o in allowed), body["detail"]
        # the server's own configuration: refused by name, nested too
        for option in sorted(SERVER_ONLY_PARAMS & set(cls.declared)):
            status, body = client.detect(name, {option: "http://evil.example/"})
            assert status == 400 and "server" in body["detail"], (name, option, body)
    assert seen > 400  # the loops really ran over the declarations
    # the reported cases
    for params, word in (
        ({"grid": 5000}, "grid"),
        ({"grid": 1e308}, "grid"),
        ({"threshold": float("nan")}, "threshold"),
        ({"raw_threshold": float("inf")}, "raw_threshold"),
    ):
        status, body = client.detect("baseline", params)
        assert status == 400 and word in body["detail"], (params, body)
    status, body = client.detect("embedded", {"sigma": float("inf")})
    assert status == 400 and "sigma" in body["detail"]
    status, body = client.detect("lmm", {"max_image_side": 100000})
    assert status == 400 and "4096" in body["detail"]
    status, body = client.detect("lmm+embedded", {"embedded_params": {"resolution": 10**6}})
    assert status == 400 and "resolution" in body["detail"]
    for text in ("[" * 2000 + "]" * 2000, '{"a":' * 2000 + "1" + "}" * 2000, '{"grid": "' + "x" * 20000 + '"}'):
        status, body = client.detect("baseline", text)
        assert status == 400 and "params" in body["detail"]
    for text in ("{grid: 4", "[1, 2]", "null", '"text"', "NaN"):
        status, body = client.detect("baseline", text)
        assert status == 400 and "params" in body["detail"], (text, body)


def test_backbones_only_by_the_servers_names(client: Client, service: Service) -> None:
    # a path from a request is never opened: missing and not allowed get the same answer
    offered = "effnet-lite0, effnet-lite1, effnet-lite2, dinov2-s, onnx:tiny"
    details = []
    for value in (
        "onnx:/etc/passwd",
        "onnx:/no/such/file.onnx",
        "onnx:../models/tiny",
        "onnx:nosuch",
        "onnx:tiny#a b",
        "onnx:" + "x" * 600,
        "/etc/passwd",
        "effnet-lite9",
    ):
        status, body = client.detect("embedded", {"backbone": value})
        assert status == 400 and offered in body["detail"], (value, body)
        details.append(body["detail"].replace(repr(value[:80]), "VALUE"))
        # the same for a job and for a stored model, and nested in another detector's options
        status, body = client.json(
            "POST",
            "/v1/jobs",
            {"kind": "batch", "data_dir": "tiles", "detector": "embedded", "params": {"backbone": value}},
        )
        assert status == 400 and offered in body["detail"], (value, body)
        status, body = client.form(
            "/v1/models", {"name": "m", "detector": "embedded", "params": json.dumps({"backbone": value})}
        )
        assert status == 400 and offered in body["detail"], (value, body)
        status, body = client.detect("lmm+embedded", {"embedded_params": {"backbone": value}})
        assert status == 400 and offered in body["detail"], (value, body)
    assert len(set(details)) == 1, details
    # the server's own ONNX file, by its name: accepted (then the upload is refused as no image)
    status, body = client.detect("embedded", {"backbone": "onnx:tiny"})
    assert status == 415, body
    status, d = client.get("/v1/detectors")
    assert d["backbones"] == offered.split(", ")


# -- lists, ids, files --------------------------------------------------------------------------
BAD_NUMBERS = ["-1", "0", "abc", "1e3", "1.5", "NaN", "", "%00", "99999999999999999999999", "9223372036854775807"]
BAD_IDS = ["0" * 32, "x" * 5000, "..%2F..%2Fetc%2Fpasswd", "%00", "%E2%80%AE", "ABCDEF" + "0" * 26, "a%2Fb"]


def test_query_numbers_ids_and_static_files(client: Client) -> None:
    for path in ("/v1/inspections", "/v1/models", "/v1/jobs/" + "0" * 32 + "/results"):
        for key in ("limit", "offset"):
            for value in BAD_NUMBERS:
                status, _ = client.get(f"{path}?{key}={value}")
                assert status in (200, 404, 422), (path, key, value, status)
    for value in ("99999999999999999999999", "9223372036854775807"):
        status, body = client.get(f"/v1/inspections?offset={value}")
        assert status == 422 and "offset" in body["detail"]
    for value in BAD_NUMBERS:
        status, _ = client.get(f"/v1/jobs?limit={value}")
        assert status in (200, 422)
    for bad in BAD_IDS:
        for method, path in (
            ("GET", f"/v1/inspections/{bad}"),
            ("DELETE", f"/v1/inspections/{bad}"),
            ("GET", f"/v1/inspections/{bad}/overlay.png"),
            ("GET", f"/v1/inspections/{bad}/secret.txt"),
            ("GET", f"/v1/jobs/{bad}"),
            ("POST", f"/v1/jobs/{bad}/cancel"),
            ("POST", f"/v1/jobs/{bad}/resume"),
            ("GET", f"/v1/jobs/{bad}/report/index.html"),
            ("GET", f"/v1/models/{bad}"),
            ("DELETE", f"/v1/models/{bad}"),
        ):
            status, _, _ = client.call(method, path)
            assert status in (404, 405, 422), (method, path[:80], status)
    for path in ("/static/..%2Fapp.py", "/static/%00", "/static/" + "x" * 5000, "/static/", "/static/..", "/nothing"):
        status, _ = client.get(path)
        assert status in (404, 405), (path[:60], status)
    # a model id that is no id, in a detection and a job
    status, body = client.form("/v1/detect", {"model": "x" * 5000}, [("files", "a.png", png(texture(1)))])
    assert status == 404 and "no model" in body["detail"]
    status, body = client.json("POST", "/v1/jobs", {"kind": "batch", "data_dir": "tiles", "model": "../../x"})
    assert status == 404


def test_folders_only_under_the_data_roots(client: Client, service: Service) -> None:
    # outside the roots (whether it exists), missing inside, or out through a symlink: one answer
    same = [str(service.outside / "tiles"), "/no/such/place", "escape/tiles", "nothing-here", "../outside/tiles"]
    odd = ["a" * 5000, "tiles\x00x", "loop/x", "~root", "/etc", "tiles/../../outside", "", " ", "\u202e"]
    for field in ("data_dir", "normal_dir", "folder"):
        answers = set()
        for value in same + odd:
            if field == "normal_dir" and value == "":
                continue  # no references: a zero-shot batch, a valid job
            if field == "folder":
                status, body = client.form("/v1/models", {"name": "m", "detector": "baseline", "folder": value})
            else:
                payload = {"kind": "batch", "data_dir": "tiles", "detector": "baseline", field: value}
                status, body = client.json("POST", "/v1/jobs", payload)
            assert status in (400, 404, 422), (field, value[:40], status, body)
            if value in same:
                assert status == 404, (field, value, body)
                answers.add(body["detail"].replace(repr(value[:120]), "VALUE"))
        assert len(answers) == 1, answers
    # a job and a model on a real folder still work
    status, job = client.json(
        "POST", "/v1/jobs", {"kind": "batch", "data_dir": "tiles/test/good", "detector": "baseline"}
    )
    assert status == 202, job
    for bad in ("..%2F..%2Fgenad.sqlite3", "a%00b", "x" * 5000, "%2Fetc%2Fpasswd", "..", "loop"):
        status, _ = client.get(f"/v1/jobs/{job['id']}/report/{bad}")
        assert status == 404


def test_job_bodies_are_bounded(client: Client) -> None:
    base = {"kind": "batch", "data_dir": "tiles", "detector": "baseline"}
    for extra in (
        {"seed": 10**30},
        {"seed": 1e308},
        {"seed": -1},
        {"shots": 10**30},
        {"limit": -1},
        {"limit": "all"},
        {"kind": "rm"},
        {"rm": "-rf"},
        {"detector": "d" * 5000},
        {"params": [1, 2]},
        {"params": "grid=8"},
    ):
        status, body = client.json("POST", "/v1/jobs", {**base, **extra})
        assert status in (400, 422), (extra, status, body)
    for params in ({"grid": float("nan")}, {"grid": 10**30}, {"foo": 1}, deep(6), {"api_key": "x"}, {"grid": 5000}):
        status, body = client.json("POST", "/v1/jobs", {**base, "params": params})
        assert status == 400 and ("params" in body["detail"] or "option" in body["detail"]), (params, body)
    status, body = client.json(
        "POST", "/v1/jobs", b'{"kind": "batch", "params": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3001
    )
    assert status in (400, 422) and "body" in body["detail"]
    status, body = client.json("POST", "/v1/jobs", b"{" + b" " * 100_000 + b"}")
    assert status == 413
    status, body = client.json("POST", "/v1/jobs", b"not json")
    assert status == 422
    status, body = client.json("POST", "/v1/jobs", b'{"kind": "batch", "data_dir": NaN}')
    assert status == 422


def test_zero_shot_with_one_image_says_what_to_do_on_the_page(client: Client) -> None:
    status, body = client.detect("baseline", {}, image=png(texture(2)))
    assert status == 400
    detail = body["detail"]
    assert "upload at least 3" in detail and "normal references" in detail and "stored model" in detail
    assert "--normal" not in detail and "fit()" not in detail


# -- the token ------------------------------------------------------------------------------------
def test_every_v1_route_needs_the_token(service: Service) -> None:
    anon = Client(service, token=None)
    for method, path in (
        ("GET", "/v1/detectors"),
        ("GET", "/v1/inspections"),
        ("GET", "/v1/inspections/" + "0" * 32 + "/image.png"),
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/models"),
        ("POST", "/v1/detect"),
        ("GET", "/v1/no-such-route"),
        ("GET", "/v1"),
    ):
        for header in (None, "Bearer wrong-token-0000000000", "Basic " + TOKEN, "Bearer", TOKEN, f"Bearer {TOKEN}x"):
            status, body, r = anon.call(method, path, headers={} if header is None else {"Authorization": header})
            assert status == 401, (method, path, header, status)
            assert r.getheader("www-authenticate", "").startswith("Bearer"), r.getheaders()
            assert "token" in body["detail"]
    # the right one, in any case of the scheme
    for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN}"):
        status, body, _ = anon.call("GET", "/v1/jobs", headers={"Authorization": header})
        assert status == 200 and "jobs" in body
    # the page, its files, the API docs and the health check stay public and hold no data
    for path in ("/", "/static/app.js", "/static/style.css", "/docs", "/openapi.json"):
        status, _ = anon.get(path)
        assert status == 200, path
    status, body = anon.get("/healthz")
    assert status == 200 and body == {"status": "ok"}
    status, page = anon.get("/")
    assert b'id="login"' in page


def test_serving_on_a_network_without_a_token_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    from genad.cli.main import main

    def never(*a: Any, **kw: Any) -> None:  # nothing may listen in this test, whatever happens
        raise AssertionError("the service would have started")

    monkeypatch.setattr(uvicorn, "run", never)
    monkeypatch.delenv("GENAD_SERVICE_TOKEN", raising=False)
    for host in ("0.0.0.0", "::", "192.168.1.10", "genad.example"):
        with pytest.raises(SystemExit) as e:
            main(["serve", "--host", host, "--storage", str(tmp_path / "s")])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "without a token" in err and "--allow-no-token" in err
    with pytest.raises(SystemExit):
        main(["serve", "--token", "short", "--storage", str(tmp_path / "s")])
    assert "16" in capsys.readouterr().err


# -- one service per storage folder -----------------------------------------------------------------
def test_a_second_service_on_the_same_storage_stops_and_leaves_the_jobs_alone(client: Client, service: Service) -> None:
    status, job = client.json("POST", "/v1/jobs", {"kind": "batch", "data_dir": "slow", "detector": "test-slow"})
    assert status == 202, job
    t0 = time.monotonic()
    while client.get(f"/v1/jobs/{job['id']}")[1]["status"] != "running":
        assert time.monotonic() - t0 < 20
        time.sleep(0.1)
    # the same storage, another port: refused at once, before it touches the database
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "genad.cli.main",
            "serve",
            "--port",
            str(free_port()),
            "--storage",
            str(service.storage),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GENAD_SERVICE_TOKEN": TOKEN},
    )
    assert second.returncode != 0
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert f"another genad service (pid {service.proc.pid}) uses storage {service.storage}" in lines[0]
    # the first one keeps serving, and its job is still running, then finishes cleanly
    status, now = client.get(f"/v1/jobs/{job['id']}")
    assert status == 200 and now["status"] == "running" and now["error"] is None, now
    while now["status"] in ("queued", "running"):
        assert time.monotonic() - t0 < 60
        time.sleep(0.2)
        now = client.get(f"/v1/jobs/{job['id']}")[1]
    assert now["status"] == "done" and now["error"] is None and now["summary"]["n_samples"] == 14, now
    assert service.proc.poll() is None


def test_a_finished_job_carries_no_stale_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    store.add_job(Job(id="b" * 32, kind="batch", status="queued", created=time.time(), request={}))
    store.update_job("b" * 32, status="running")
    assert store.mark_interrupted() == 1
    assert "service stopped" in (store.get_job("b" * 32).error or "")  # type: ignore[union-attr]
    for final in ("done", "cancelled"):
        store.update_job("b" * 32, status=final)
        assert store.get_job("b" * 32).error is None  # type: ignore[union-attr]
    store.close()
