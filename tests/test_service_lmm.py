"""The service with the LMM detector, against the local fake OpenAI-compatible server: the
explanation and usage come back, the key never does, and a request cannot redirect the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fake_openai import FakeOpenAI, count_prompt, reply
from genad.service.app import create_app, lmm_status
from service_helpers import png, texture

KEY = "sk-service-SECRET-7311"


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    answer = (
        '{"anomalous": true, "anomaly_score": 0.9, "defect_type": "hole", '
        '"location": "centre", "reason": "a dark square breaks the texture"}'
    )
    with FakeOpenAI([reply(answer)]) as srv:
        monkeypatch.setenv("GENAD_LMM_BASE_URL", srv.base_url)
        monkeypatch.setenv("GENAD_LMM_MODEL", "gpt-4o")
        monkeypatch.setenv("GENAD_LMM_API_KEY", KEY)
        monkeypatch.setenv("GENAD_CACHE_DIR", str(tmp_path / "lmm-cache"))
        yield srv


def test_lmm_detection_returns_explanation_and_usage_without_the_key(fake: FakeOpenAI, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    with TestClient(create_app(storage)) as c:
        status = lmm_status()  # what /v1/detectors reports (tested there with its import wait)
        assert status["configured"] is True and status["model"] == "gpt-4o"
        r = c.post(
            "/v1/detect",
            files=[("files", ("part.png", png(texture(1, defect=True)), "image/png"))],
            data={"detector": "lmm"},
        )
        assert r.status_code == 200, r.text
        ins = r.json()["inspections"][0]
        assert ins["score"] == pytest.approx(0.9) and ins["decision"] is True
        assert "dark square" in ins["result"]["explanation"]
        usage = ins["result"]["usage"]
        assert usage["calls"] == 1 and usage["prompt_tokens"] == count_prompt(fake.chat_requests()[0])
        assert ins["overlay_url"] is None  # an LMM verdict alone has no map
        assert c.get(ins["image_url"]).status_code == 200
        assert KEY not in r.text and KEY not in c.get("/v1/inspections").text
    assert len(fake.chat_requests()) == 1
    for path in storage.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    "params",
    [
        '{"base_url": "http://attacker.example/v1"}',
        '{"api_key": "sk-other"}',
        '{"config_file": "/etc/passwd"}',
        '{"lmm_config": "/etc/passwd"}',
        '{"prompts": "/etc"}',
        '{"budget": 1000}',
        '{"embedded_params": {"cache_dir": "/tmp/x"}}',
        '{"max_tokens": 1000000}',
        '{"describer": {"base_url": "http://attacker.example/v1"}}',
    ],
)
def test_server_configuration_cannot_be_set_by_a_request(fake: FakeOpenAI, tmp_path: Path, params: str) -> None:
    with TestClient(create_app(tmp_path / "storage")) as c:
        r = c.post(
            "/v1/detect",
            files=[("files", ("a.png", png(texture(2)), "image/png"))],
            data={"detector": "lmm", "params": params},
        )
        assert r.status_code == 400
        assert "server's configuration" in r.json()["detail"]
        r = c.post("/v1/jobs", json={"kind": "batch", "data_dir": ".", "detector": "lmm", "params": json.loads(params)})
        assert r.status_code == 400
    assert fake.chat_requests() == []
