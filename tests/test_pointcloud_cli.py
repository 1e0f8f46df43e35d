"""`genad detect` on point-cloud and video files, end to end through the CLI."""

import json

import pytest

from genad.cli.main import main
from genad.io.pointcloud import write_ply
from genad.modalities.pointcloud.synth import make_dataset
from video_helpers import write_test_video


def test_detect_point_clouds_few_shot_writes_results_and_pictures(tmp_path):
    train, test = make_dataset(
        "plane", n_train=3, n_normal=2, n_defective=2, n_points=4000, seed=1, defects=("bump",), size=0.25, depth=0.1
    )
    (tmp_path / "ref").mkdir()
    (tmp_path / "in").mkdir()
    for s in train:
        write_ply(tmp_path / "ref" / f"{s.id}.ply", s.points)
    for s in test:
        write_ply(tmp_path / "in" / f"{s.id}.ply", s.points)
    out = tmp_path / "out"
    main(
        [
            "detect",
            str(tmp_path / "in"),
            "-n",
            str(tmp_path / "ref"),
            "-d",
            "pointcloud",
            "-p",
            "image_detector=baseline",
            "-p",
            "views=3",
            "-p",
            "size=96",
            "--out",
            str(out),
        ]
    )
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_id = {r["id"].split("/")[-1]: r for r in rows}
    assert len(by_id) == 4 and all(r["error"] is None for r in rows)
    bumps = [r["score"] for k, r in by_id.items() if "bump" in k]
    goods = [r["score"] for k, r in by_id.items() if "good" in k]
    assert min(bumps) > max(goods)
    for r in rows:  # the decision, its boundary and the normalised score agree
        assert 0.0 <= r["normalized_score"] <= 1.0
        assert r["decision"] == (r["score"] > r["threshold"]) == (r["normalized_score"] > 0.5)
        assert ("hot_spot" in r["extra"]) == r["decision"]
    assert all(r["decision"] for k, r in by_id.items() if "bump" in k)
    assert len(list((out / "overlays").glob("*.png"))) == 4


def test_detect_an_undecodable_video_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 500)
    write_test_video(tmp_path / "ok.mp4", n=12)
    with pytest.raises(SystemExit) as e:
        main(["detect", str(tmp_path / "broken.mp4"), "-d", "video", "-p", "image_detector=baseline"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "cannot decode video" in err and "Traceback" not in err


def test_detect_a_video_zero_shot_reports_its_event_range(tmp_path):
    from video_helpers import SPAN

    write_test_video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    main(
        [
            "detect",
            str(tmp_path / "clip.mp4"),
            "-d",
            "video",
            "-p",
            'image_params={"resolution": 96}',
            "--out",
            str(out),
        ]
    )
    (rec,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rec["error"] is None and rec["decision"] is True and 0.5 < rec["normalized_score"] <= 1.0
    assert (
        len(rec["ranges"]) == 1 and abs(rec["ranges"][0][0] - SPAN[0]) <= 3 and abs(rec["ranges"][0][1] - SPAN[1]) <= 3
    )
