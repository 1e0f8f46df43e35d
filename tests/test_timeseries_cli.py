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
    assert rec["extra"]["method"] == "matrix profile" and rec["extra"]["nan_indices"] == [100]
    with Image.open(out / rec["overlay"]) as im:
        assert im.format == "PNG"
