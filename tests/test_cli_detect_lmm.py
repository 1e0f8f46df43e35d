"""`genad detect --detector lmm` with a region method: the marked image and the region labels
the model answered about are saved beside the overlay, and the map follows the answer."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from fake_openai import FakeOpenAI, reply
from genad.cli.main import main
from lmm_helpers import KEY, grep_tree, set_env


def test_detect_lmm_grid_saves_visual_prompt_and_maps_region(tmp_path, monkeypatch):
    img = np.full((120, 120, 3), 128, np.uint8)
    Image.fromarray(img).save(tmp_path / "part.png")
    out = tmp_path / "out"
    with FakeOpenAI([reply("image anomaly score: 0.9; region 4: 0.8.")]) as srv:
        set_env(monkeypatch, srv, tmp_path)
        try:
            main(
                [
                    "detect",
                    str(tmp_path / "part.png"),
                    "-d",
                    "lmm",
                    "-p",
                    "regions=grid",
                    "-p",
                    "n_regions=2",
                    "--out",
                    str(out),
                ]
            )
        except SystemExit as e:
            assert not e.code
        sent = srv.chat_requests()
    assert len(sent) == 1 and len(FakeOpenAI.images_in(sent[0])) >= 2  # image + its set-of-mark version
    rec = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert rec["score"] == 0.9 and rec["decision"] is True
    vp = out / "visual_prompts"
    saved = list(vp.rglob("*"))
    labels = np.asarray(Image.open(next(p for p in saved if p.name == "regions.png")))
    assert sorted(np.unique(labels).tolist()) == [1, 2, 3, 4]  # 2x2 grid, numbered 1..4
    som = np.asarray(Image.open(next(p for p in saved if p.name == "som.png")))
    assert som.shape == img.shape and np.abs(som.astype(int) - img).max() > 100  # marks drawn
    regions = json.loads(next(p for p in saved if p.name == "regions.json").read_text())
    scored = {r["index"]: r["score"] for r in (regions if isinstance(regions, list) else regions["regions"])}
    assert scored.get(4) == 0.8 and not scored.get(1)
    assert not grep_tree(out, KEY)
