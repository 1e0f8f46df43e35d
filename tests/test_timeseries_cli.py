"""`genad detect series.csv` end to end: loader, default detector, results.jsonl, plot."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from genad.cli.main import main


def test_detect_a_csv_series(tmp_path):
    t = np.arange(1200)
    x = np.sin(2 * np.pi * t / 40) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    x[700] += 4.0
    stamps = np.datetime64("2024-01-01T00:00") + t.astype("timedelta64[m]")
    rows = [f"{s},{'' if i == 100 else v}\n" for i, (s, v) in enumerate(zip(stamps.astype(str), x))]
    (tmp_path / "series.csv").write_text("timestamp,value\n" + "".join(rows))
    out = tmp_path / "out"
    main(["detect", str(tmp_path / "series.csv"), "--out", str(out)])
    (rec,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rec["error"] is None and rec["decision"] is True
    assert any(a <= 700 < b for a, b in rec["ranges"]), rec["ranges"]
    assert 0.5 < rec["normalized_score"] <= 1.0 and rec["score"] > rec["threshold"]
    assert rec["extra"]["method"] == "matrix profile" and rec["extra"]["nan_indices"] == [100]
    with Image.open(out / rec["overlay"]) as im:
        assert im.format == "PNG"


def test_detect_with_a_normalised_and_a_raw_threshold(tmp_path):
    t = np.arange(1200)
    x = np.sin(2 * np.pi * t / 40) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    x[700] += 4.0
    np.savetxt(tmp_path / "series.csv", x, header="value", comments="")
    recs = {}
    for name, opts in {"default": [], "strict": ["-p", "threshold=0.99"], "raw": ["-p", "raw_threshold=1e9"]}.items():
        out = tmp_path / name
        main(["detect", str(tmp_path / "series.csv"), "-d", "ts-iforest", "--out", str(out), *opts])
        (recs[name],) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    d, strict, raw = recs["default"], recs["strict"], recs["raw"]
    assert d["decision"] is True and d["ranges"]
    assert strict["threshold"] > d["threshold"] and strict["normalized_score"] == d["normalized_score"]
    flagged = lambda rec: sum(b - a for a, b in rec["ranges"])  # noqa: E731
    assert flagged(strict) < flagged(d)
    assert raw["threshold"] == 1e9 and raw["decision"] is False and raw["ranges"] == []
