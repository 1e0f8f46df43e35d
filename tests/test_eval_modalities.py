"""`genad eval` on every modality: a NAB folder, UCR files, a labelled CSV, a labelled
point-cloud folder and videos with frame labels, all generated and small. The figures are
checked against scikit-learn on the scores stored in the run folder, against a brute-force
point-adjusted F1, and against a NAB score and range figures worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from foundation_helpers import run_cli
from genad.run import RunFolder
from genad.types import GroundTruth, Result, TimeSeriesSample

SERIES_KEYS = {
    "point_auroc",
    "point_ap",
    "point_adjusted_f1",
    "range_precision",
    "range_recall",
    "range_f1",
    "nab_score",
    "per_series",
}
COMMON_KEYS = {"kind", "modality", "detector", "n_samples", "n_failed", "seconds", "run_dir", "shots", "seed"}


def _series(n: int, spike: int | None, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.sin(2 * np.pi * np.arange(n) / 25) + 0.05 * rng.standard_normal(n)
    if spike is not None:
        x[spike : spike + 6] += 3.0
    return x


def _stamps(n: int) -> list[str]:
    t = np.datetime64("2024-01-01T00:00") + np.arange(n).astype("timedelta64[m]")
    return [str(s).replace("T", " ") + ":00" for s in t]


def _stored(run_dir: Path) -> dict[str, tuple[dict, np.ndarray]]:
    """Each record of the run folder with its stored scores, by id."""
    folder = RunFolder(run_dir)
    return {r["id"]: (r, folder.load_map(r)) for r in folder.ordered()}


def _pa_f1_brute(y: np.ndarray, s: np.ndarray) -> float:
    """Point-adjusted F1 at its best threshold, one threshold at a time."""
    from genad.ops import runs_to_ranges

    best = 0.0
    for t in np.unique(s):
        p = s >= t
        for a, b in runs_to_ranges(y):
            if p[a:b].any():
                p[a:b] = True
        tp, fp, fn = (p & y).sum(), (p & ~y).sum(), (~p & y).sum()
        best = max(best, 2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(best)


def _eval(args: list, capsys) -> tuple[dict, str]:
    code, out, err = run_cli(["eval", *args, "-q"], capsys)
    assert code == 0, err
    j = [a for i, a in enumerate(args) if i and args[i - 1] == "--json"]
    return (json.loads(Path(j[0]).read_text()) if j else {}), out


# -- series --------------------------------------------------------------------------------
def make_nab(root: Path) -> dict[str, tuple[int, int]]:
    """data/g/a.csv with a window around a spike at 400, data/g/b.csv without windows."""
    n = 600
    (root / "data" / "g").mkdir(parents=True)
    (root / "labels").mkdir()
    for name, spike in (("a", 400), ("b", None)):
        x = _series(n, spike, seed=len(name) + (spike or 0))
        rows = "".join(f"{t},{v:.6f}\n" for t, v in zip(_stamps(n), x))
        (root / "data" / "g" / f"{name}.csv").write_text("timestamp,value\n" + rows)
    st = _stamps(n)
    windows = {"g/a.csv": [[st[390].replace(" ", "T") + ".000000", st[419]]], "g/b.csv": []}
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    return {"g/a.csv": (390, 420)}


def test_eval_a_nab_folder_matches_scikit_learn_on_the_stored_scores(tmp_path, capsys):
    truth = make_nab(tmp_path / "nab")
    s, out = _eval([tmp_path / "nab", "--json", tmp_path / "s.json", "--run-dir", tmp_path / "run"], capsys)
    assert SERIES_KEYS | COMMON_KEYS <= set(s)
    assert s["kind"] == "nab" and s["detector"] == "ts-matrix-profile" and s["n_samples"] == 2 and not s["n_failed"]
    assert s["anomalous_series"] == 1 and s["normal_series"] == 1
    stored = _stored(tmp_path / "run")
    rec, scores = stored["g/a.csv"]
    y = np.zeros(len(scores), bool)
    y[slice(*truth["g/a.csv"])] = True
    # one anomalous series: the means are its figures
    assert s["point_auroc"] == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert s["point_ap"] == pytest.approx(average_precision_score(y, scores), abs=1e-12)
    assert s["point_adjusted_f1"] == pytest.approx(_pa_f1_brute(y, scores), abs=1e-12)
    assert s["point_auroc"] > 0.9  # the spike is found
    # the series without a window gives no point figures, but counts for the NAB score
    row_b = next(r for r in s["per_series"] if r["id"] == "g/b.csv")
    assert row_b["auroc"] is None and "range_f1" not in row_b
    for k in ("point_auroc", "point_adjusted_f1", "nab_score", "range_f1"):
        assert k.split("_")[0] in out
    assert f"{s['point_auroc']:.4f}" in out and f"run dir: {tmp_path / 'run'}" in out

    # resumed: nothing scored again, the same figures
    s2, out2 = _eval(
        [tmp_path / "nab", "--json", tmp_path / "s2.json", "--run-dir", tmp_path / "run", "--resume"], capsys
    )
    assert s2["n_resumed"] == 2 and "2 resumed" in out2
    for k in ("point_auroc", "point_ap", "point_adjusted_f1", "nab_score", "range_f1"):
        assert s2[k] == s[k]


def test_series_figures_against_a_case_worked_by_hand():
    """Two series, hand-made results: the NAB score summed over the corpus, the range and
    flagged-point figures, the series decisions."""
    from genad.modalities.timeseries.metrics import series_metrics

    n = 1000  # NAB's probation: the first 150 points
    a = TimeSeriesSample(id="a", values=np.zeros(n), truth=GroundTruth(label=1, ranges=[(500, 520)]))
    b = TimeSeriesSample(id="b", values=np.zeros(n), truth=GroundTruth(label=0, ranges=[]))
    sa = np.zeros(n, np.float32)
    sa[495:525] = 1.0
    sa[500] = 2.0  # the peak of the detected range sits on the window's first point
    sb = np.zeros(n, np.float32)
    sb[300:310] = 1.0
    ra = Result("a", score=2.0, decision=True, anomaly_map=sa, ranges=[(495, 525)])
    rb = Result("b", score=1.0, decision=True, anomaly_map=sb, ranges=[(300, 310)])
    m = series_metrics([a, b], [ra, rb])["summary"]
    # NAB, standard profile: a's detection at the window's first point earns A_TP = 1; b's
    # detection before any window costs A_FP = 0.11; raw 0.89, null -1 (one window), perfect 1
    assert m["nab_score"] == pytest.approx(100 * (0.89 + 1) / 2)
    # range precision = 20 of the 30 detected points, recall = all 20 labelled ones
    assert m["range_precision"] == pytest.approx(20 / 30) and m["range_recall"] == 1.0
    assert m["range_f1"] == pytest.approx(0.8)
    assert m["point_precision"] == pytest.approx(20 / 30) and m["point_f1"] == pytest.approx(0.8)
    y = np.zeros(n, bool)
    y[500:520] = True
    assert m["point_auroc"] == pytest.approx(roc_auc_score(y, sa))
    assert m["point_adjusted_f1"] == pytest.approx(_pa_f1_brute(y, sa.astype(np.float64)))
    assert m["anomalous_series_flagged"] == 1.0 and m["normal_series_flagged"] == 1.0
    assert "ucr_hit_rate" not in m
    # a normal training prefix (UCR) is left out of the figures, whatever it scores
    c = TimeSeriesSample(id="c", values=np.zeros(n), train_end=400, truth=GroundTruth(label=1, ranges=[(700, 710)]))
    sc = np.linspace(0, 1, n).astype(np.float32)[::-1].copy()  # falls over the series
    sc[705] = 5.0
    rc = Result("c", score=5.0, decision=True, anomaly_map=sc, ranges=[(700, 711)])
    [row] = series_metrics([c], [rc])["per_series"]
    yc = np.zeros(n, bool)
    yc[700:710] = True
    assert row["auroc"] == pytest.approx(roc_auc_score(yc[400:], sc[400:]))
    assert row["auroc"] != pytest.approx(roc_auc_score(yc, sc))
    assert row["ucr_hit"] is True and row["range_r"] == 1.0
    sc[100] = 9.0  # the highest point inside the prefix: not a hit, not counted
    [row] = series_metrics([c], [rc])["per_series"]
    assert row["ucr_hit"] is True and row["auroc"] == pytest.approx(roc_auc_score(yc[400:], sc[400:]))
    # a detection on b's far side of nothing, and a's missed: null-level raw = -1 - 0.11
    ra_missed = Result("a", score=0.0, decision=False, anomaly_map=np.zeros(n, np.float32), ranges=[])
    m2 = series_metrics([a, b], [ra_missed, rb])["summary"]
    assert m2["nab_score"] == pytest.approx(100 * (-1.11 + 1) / 2)
    assert m2["range_f1"] == 0.0 and m2["anomalous_series_flagged"] == 0.0


def test_eval_ucr_files_scores_after_the_training_prefix(tmp_path, capsys):
    (tmp_path / "ucr").mkdir()
    x = _series(1000, 600, seed=3)
    name = "001_UCR_Anomaly_toy_300_600_605.txt"
    np.savetxt(tmp_path / "ucr" / name, x, fmt="%.6f")
    s, _ = _eval(
        [tmp_path / "ucr", "-d", "ts-iforest", "--json", tmp_path / "s.json", "--run-dir", tmp_path / "run"], capsys
    )
    assert s["kind"] == "ucr" and s["detector"] == "ts-iforest"
    assert SERIES_KEYS <= set(s) and s["ucr_hit_rate"] == 1.0
    (rec, scores) = _stored(tmp_path / "run")[name[:-4]]
    y = np.zeros(1000, bool)
    y[600:606] = True  # both ends of the name's range included
    assert s["point_auroc"] == pytest.approx(roc_auc_score(y[300:], scores[300:]), abs=1e-12)
    assert s["point_ap"] == pytest.approx(average_precision_score(y[300:], scores[300:]), abs=1e-12)
    # one UCR file on its own is the same data set of one
    s1, _ = _eval([tmp_path / "ucr" / name, "-d", "ts-iforest", "--json", tmp_path / "one.json"], capsys)
    assert s1["kind"] == "ucr" and s1["n_samples"] == 1 and s1["point_auroc"] == s["point_auroc"]


def test_eval_a_labelled_csv_stores_the_detectors_own_scores(tmp_path, capsys):
    import genad
    from genad.io.timeseries import load_series_file

    n = 500
    x = _series(n, 250, seed=5)
    lab = np.zeros(n, int)
    lab[250:256] = 1
    rows = "".join(f"{t},{v:.6f},{k}\n" for t, v, k in zip(_stamps(n), x, lab))
    path = tmp_path / "machine.csv"
    path.write_text("timestamp,value,is_anomaly\n" + rows)
    s, out = _eval([path, "--json", tmp_path / "s.json", "--run-dir", tmp_path / "run"], capsys)
    assert s["kind"] == "series" and s["series"] == 1 and SERIES_KEYS <= set(s)
    (_, scores) = _stored(tmp_path / "run")["machine.csv"]
    # the stored scores are the detector's own, at full precision
    [r] = genad.create("ts-matrix-profile").predict([load_series_file(path)])
    assert scores.dtype == np.float32 and np.array_equal(scores, r.anomaly_map)
    assert s["point_auroc"] == pytest.approx(roc_auc_score(lab, scores), abs=1e-12)
    assert s["point_ap"] == pytest.approx(average_precision_score(lab, scores), abs=1e-12)


# -- point clouds ----------------------------------------------------------------------------
def make_cloud_folder(root: Path) -> None:
    from genad.io.pointcloud import write_ply
    from genad.modalities.pointcloud.synth import make_dataset

    train, test = make_dataset(
        "plane", n_train=2, n_normal=3, n_defective=3, n_points=1500, seed=2, defects=("bump",), size=0.25, depth=0.1
    )
    for s in train:
        (root / "train" / "good").mkdir(parents=True, exist_ok=True)
        write_ply(root / "train" / "good" / f"{s.id}.ply", s.points)
    for s in test:
        kind = s.truth.defect_type
        (root / "test" / kind).mkdir(parents=True, exist_ok=True)
        extra = None if kind == "good" else {"anomaly": s.truth.point_labels.astype(np.float32)}
        write_ply(root / "test" / kind / f"{s.id}.ply", s.points, extra=extra)


def test_eval_a_point_cloud_folder_matches_scikit_learn(tmp_path, capsys):
    make_cloud_folder(tmp_path / "parts")
    args = ["-p", "image_detector=baseline", "-p", "views=2", "-p", "size=64"]
    s, out = _eval(
        [tmp_path / "parts", "--shots", "2", *args, "--json", tmp_path / "s.json", "--run-dir", tmp_path / "run"],
        capsys,
    )
    assert s["kind"] == "pointcloud" and s["detector"] == "pointcloud" and s["shots"] == 2
    assert s["reference_source"] == "train" and len(s["references"]) == 2
    assert {"object_auroc", "object_ap", "point_auroc", "point_ap", "per_type"} | COMMON_KEYS <= set(s)
    assert set(s["per_type"]) == {"good", "bump"} and s["n_samples"] == 6 and not s["n_failed"]
    stored = _stored(tmp_path / "run")
    from genad.io.pointcloud import load_pointcloud_dataset

    samples = {c.id: c for c in load_pointcloud_dataset(tmp_path / "parts")}
    assert set(stored) == set(samples)
    labels = [samples[i].label for i in stored]
    scores = [rec["score"] for rec, _ in stored.values()]
    assert s["object_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert s["object_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    pl = np.concatenate([samples[i].truth.point_labels for i in stored])
    ps = np.concatenate([m for _, m in stored.values()])
    assert pl.sum() > 0 and not np.concatenate([samples[i].truth.point_labels for i in stored if "good" in i]).any()
    assert s["point_auroc"] == pytest.approx(roc_auc_score(pl, ps), abs=1e-12)
    assert s["point_ap"] == pytest.approx(average_precision_score(pl, ps), abs=1e-12)
    assert "object" in out and "bump" in out


def test_mvtec_3d_scans_take_their_point_labels_from_the_gt_masks(tmp_path):
    import tifffile  # genad[pointcloud], in all

    from genad.io.datasets import data_kind
    from genad.io.pointcloud import load_pointcloud_dataset

    grid = np.zeros((6, 5, 3), np.float32)
    yy, xx = np.mgrid[0:6, 0:5]
    grid[..., 0], grid[..., 1], grid[..., 2] = xx, yy, 1.0
    grid[0, 0] = 0  # a missing point
    mask = np.zeros((6, 5), np.uint8)
    mask[2:4, 1:3] = 255
    for kind in ("good", "hole"):
        (tmp_path / "test" / kind / "xyz").mkdir(parents=True)
        tifffile.imwrite(tmp_path / "test" / kind / "xyz" / "000.tiff", grid, photometric="rgb")
    (tmp_path / "test" / "hole" / "gt").mkdir()
    Image.fromarray(mask).save(tmp_path / "test" / "hole" / "gt" / "000.png")
    assert data_kind(tmp_path) == "pointcloud"
    good, hole = load_pointcloud_dataset(tmp_path)
    assert good.id == "test/good/xyz/000.tiff" and good.label == 0 and not good.truth.point_labels.any()
    assert hole.label == 1 and hole.truth.defect_type == "hole" and len(hole.points) == 29
    assert hole.truth.point_labels.tolist() == (mask.ravel()[1:] > 0).tolist()


# -- videos ----------------------------------------------------------------------------------
def make_video_folder(root: Path) -> np.ndarray:
    """test/a/ (frames with the event), test/b.mp4 (no event); labels for a in
    frame_labels/a.txt, for b in frame_labels.json; train/normal/ a normal clip (every third
    frame of a without its event). Returns a's labels."""
    from video_helpers import moving_square_frames, write_test_video

    n = 80
    (root / "test" / "a").mkdir(parents=True)
    for i, f in enumerate(moving_square_frames(n=n)):
        Image.fromarray(f).save(root / "test" / "a" / f"{i:03d}.png")
    write_test_video(root / "test" / "b.mp4", n=24, anomaly=False)
    (root / "train" / "normal").mkdir(parents=True)
    for i, f in enumerate(moving_square_frames(n=n, anomaly=False)[::3]):
        Image.fromarray(f).save(root / "train" / "normal" / f"{i:03d}.png")
    lab = np.zeros(n, int)
    lab[40:60] = 1
    (root / "frame_labels").mkdir()
    (root / "frame_labels" / "a.txt").write_text("\n".join(map(str, lab)))
    (root / "frame_labels.json").write_text(json.dumps({"b": []}))
    return lab.astype(bool)


def test_eval_a_video_folder_with_frame_labels(tmp_path, capsys):
    lab_a = make_video_folder(tmp_path / "clips")
    s, out = _eval(
        [
            tmp_path / "clips",
            "--shots",
            "1",
            "-p",
            "image_detector=baseline",
            "--json",
            tmp_path / "s.json",
            "--run-dir",
            tmp_path / "run",
        ],
        capsys,
    )
    assert s["kind"] == "video" and s["detector"] == "video" and s["n_samples"] == 2 and not s["n_failed"]
    assert s["references"] == ["train/normal"] and s["reference_source"] == "train"
    assert {"frame_auroc", "frame_ap", "frame_f1", "video_f1", "per_video"} | COMMON_KEYS <= set(s)
    stored = _stored(tmp_path / "run")
    (_, ma), (_, mb) = stored["test/a"], stored["test/b"]
    assert len(ma) == 80 and len(mb) == 24  # every frame of the file read
    y = np.concatenate([lab_a, np.zeros(24, bool)])
    sc = np.concatenate([ma, mb])
    assert s["frame_auroc"] == pytest.approx(roc_auc_score(y, sc), abs=1e-12)
    assert s["frame_ap"] == pytest.approx(average_precision_score(y, sc), abs=1e-12)
    assert s["n_frames"] == 104
    rows = {r["id"]: r for r in s["per_video"]}
    assert rows["test/a"]["frame_auroc"] == pytest.approx(roc_auc_score(lab_a, ma), abs=1e-12)
    assert rows["test/b"]["frame_auroc"] is None and rows["test/b"]["labelled_frames"] == 0
    # the flagged-frame figures pool the frames inside the detector's ranges
    flagged = {k: np.zeros(len(m), bool) for k, (_, m) in stored.items()}
    for k, (rec, _) in stored.items():
        for a, b in rec["ranges"]:
            flagged[k][a:b] = True
    f = np.concatenate([flagged["test/a"], flagged["test/b"]])
    tp, fp, fn = int((f & y).sum()), int((f & ~y).sum()), int((~f & y).sum())
    assert rows["test/a"]["flagged_in"] == int((flagged["test/a"] & lab_a).sum())
    assert tp and fp  # few-shot baseline: the event found, and a few frames beside it
    assert s["frame_recall"] == pytest.approx(tp / (tp + fn))
    assert s["frame_precision"] == pytest.approx(tp / (tp + fp))
    # the verdicts: a (with its event) and b (without) against their labels
    va, vb = rows["test/a"]["decision"], rows["test/b"]["decision"]
    vtp, vfp, vfn = int(va), int(vb), int(not va)
    assert s["video_f1"] == (pytest.approx(2 * vtp / (2 * vtp + vfp + vfn)) if vtp + vfp + vfn else None)
    assert "frame" in out and "test/a" in out


def test_video_figures_against_a_case_worked_by_hand():
    from genad.modalities.video.metrics import video_metrics
    from genad.types import VideoSample

    frames = np.zeros((10, 4, 4, 3), np.uint8)
    lab = np.zeros(10, bool)
    lab[4:7] = True
    a = VideoSample(id="a", frames=frames, truth=GroundTruth(label=1, frame_labels=lab))
    b = VideoSample(id="b", frames=frames, truth=GroundTruth(label=0, ranges=[]))
    sa = np.arange(10, dtype=np.float32)  # frames 7-9 score above the event: AUROC 12/21 by counting
    sb = np.zeros(10, np.float32)
    ra = Result("a", score=9.0, decision=True, anomaly_map=sa, ranges=[(5, 9)])
    rb = Result("b", score=1.0, decision=True, anomaly_map=sb, ranges=[(0, 2)])
    m = video_metrics([a, b], [ra, rb])
    # flagged frames: a 5-8 (2 in the event, 2 outside), b 0-1 (2 outside); 1 event frame missed
    assert (m["frame_precision"], m["frame_recall"], m["frame_f1"]) == (2 / 6, 2 / 3, 4 / 9)
    # verdicts: a rightly anomalous, b a false alarm
    assert (m["video_precision"], m["video_recall"], m["video_f1"]) == (0.5, 1.0, 2 / 3)
    row_a, row_b = m["per_video"]
    assert row_a["frame_auroc"] == pytest.approx(12 / 21) and row_a["peak_frame"] == 9
    assert row_a["peak_in_event"] is False and (row_a["flagged_in"], row_a["flagged_out"]) == (2, 2)
    assert row_b["frame_auroc"] is None and row_b["labelled_frames"] == 0 and row_b["flagged_out"] == 2
    assert m["frame_auroc"] == pytest.approx(roc_auc_score(np.r_[lab, np.zeros(10, bool)], np.r_[sa, sb]))


# -- what is refused -------------------------------------------------------------------------
def test_eval_refuses_what_it_cannot_read_in_one_line(tmp_path, capsys):
    make_nab(tmp_path / "nab")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.md").write_text("hello")
    (tmp_path / "nolabel.csv").write_text("value\n1\n2\n3\n")
    cases = [
        ([tmp_path / "plain"], ["not an MVTec-style dataset", "NAB folder", "UCR", "label column", "frame_labels"]),
        ([tmp_path / "nolabel.csv"], ["has no label column", "is_anomaly"]),
        (
            [tmp_path / "nab", "-d", "baseline"],
            ["detector 'baseline' reads image, not timeseries", "ts-matrix-profile"],
        ),
        ([tmp_path / "nab", "--report", tmp_path / "r"], ["--report is for MVTec-style images", "nab data"]),
        ([tmp_path / "nab", "--csv", tmp_path / "t.csv"], ["--csv is for MVTec-style images"]),
        ([tmp_path / "nab", "--shots", "2"], ["--shots 2 asks for more normal samples than the 1"]),
    ]
    for args, messages in cases:
        code, _, err = run_cli(["eval", *args], capsys)
        assert code == 2 and "Traceback" not in err, (args, err)
        assert err.startswith("error: ") and err.strip().count("\n") == 0, err
        for m in messages:
            assert m in err, (m, err)
