"""genad.decision: calibrations, the one decision rule, and the calibration commands.

The zero-shot rule is checked on generated batches whose share of defective images runs from
0% to 90%: the boundary must flag few normals and most defects in every one of them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from foundation_helpers import run_cli
from genad import create
from genad.decision import (
    UNIT,
    Calibration,
    decide,
    from_map_bulk,
    from_reference_scores,
    from_values,
    threshold_for_best_f1,
    threshold_for_fpr,
)
from genad.errors import GenadError
from genad.types import Result

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "magnetic_tile"


def test_logistic_calibration_is_monotone_with_its_boundary_at_one_half():
    c = Calibration(2.0, 0.5, "test")
    raw = np.linspace(-10, 10, 201)
    n = c.normalize(raw)
    assert np.all(np.diff(n) > 0) and n.min() >= 0 and n.max() <= 1
    assert c.normalize(2.0) == pytest.approx(0.5)
    assert c.normalize(2.5) == pytest.approx(1 / (1 + math.exp(-1)))
    for t in (0.1, 0.5, 0.9):
        assert c.normalize(c.raw_at(t)) == pytest.approx(t)
    assert c.raw_at(0.0) == -math.inf and c.raw_at(1.0) == math.inf
    assert c.at_raw(7.0).normalize(7.0) == pytest.approx(0.5) and c.at_raw(7.0).scale == 0.5
    assert Calibration.from_dict(c.to_dict()) == c
    with pytest.raises(GenadError):
        c.raw_at(1.5)
    with pytest.raises(GenadError):
        Calibration(float("nan"))
    with pytest.raises(GenadError):
        Calibration.from_dict({"scale": 1})


def test_unit_calibration_keeps_scores_that_already_are_0_to_1():
    s = np.array([0.0, 0.2, 0.5, 0.8, 1.0])
    assert np.allclose(UNIT.normalize(s), s)
    c = Calibration(0.8, kind="unit")
    assert c.normalize(0.8) == pytest.approx(0.5) and c.normalize(0.4) == pytest.approx(0.25)
    assert c.normalize(0.9) == pytest.approx(0.75) and c.raw_at(0.75) == pytest.approx(0.9)
    with pytest.raises(GenadError):
        Calibration(1.0, kind="unit")


def test_decide_is_one_rule_and_a_verdict_wins():
    c = Calibration(1.0, 0.1)
    hi, lo, none = Result("a", score=1.2), Result("b", score=0.9), Result("c", error="x")
    for r in (hi, lo, none):
        decide(r, c)
    assert hi.decision is True and lo.decision is False and none.decision is None
    assert hi.threshold == pytest.approx(1.0) and hi.normalized_score > 0.5 > lo.normalized_score
    strict = decide(Result("a", score=1.2), c, threshold=0.95)  # normalised units
    assert strict.decision is False and strict.threshold == pytest.approx(1.0 + 0.1 * math.log(19))
    said = decide(Result("d", score=0.2), UNIT, verdict=True)
    assert said.decision is True and said.normalized_score == pytest.approx(0.2)
    d = hi.to_dict()
    assert d["normalized_score"] == pytest.approx(hi.normalized_score)
    assert Result.from_dict(d).normalized_score == pytest.approx(hi.normalized_score)


def _maps(n_good: int, n_bad: int, seed: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Maps like a zero-shot engine's: smooth noise around a level; defective ones carry a
    blob; image score = mean of the top 1% (as the embedded engine)."""
    rng = np.random.default_rng(seed)
    maps, labels = [], []
    for i in range(n_good + n_bad):
        h, w = rng.integers(60, 140, size=2)
        m = 0.6 + 0.05 * ndimage.gaussian_filter(rng.normal(size=(h, w)), 3) / 0.08
        if i >= n_good:
            r = rng.integers(4, 10)
            y, x = rng.integers(r, h - r), rng.integers(r, w - r)
            yy, xx = np.ogrid[:h, :w]
            m = m + rng.uniform(0.4, 0.8) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2.0 * r * r))
        maps.append(m.astype(np.float32))
        labels.append(int(i >= n_good))
    scores = np.array([np.sort(m.ravel())[-max(1, m.size // 100) :].mean() for m in maps])
    return maps, scores, np.array(labels)


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 0.9])
def test_zero_shot_map_bulk_holds_whatever_share_is_defective(share):
    n = 120
    n_bad = int(round(share * n))
    maps, scores, y = _maps(n - n_bad, n_bad, seed=int(share * 10))
    c = from_map_bulk(maps, scores)
    flagged = scores > c.threshold
    assert flagged[y == 0].mean() <= 0.05
    if n_bad:
        assert flagged[y == 1].mean() >= 0.8
    # the image-score rule it replaced (median + 3 MAD of the image scores) fails at 90%
    if share == 0.9:
        med = np.median(scores)
        old = med + 3 * 1.4826 * np.median(np.abs(scores - med))
        assert (scores > old)[y == 1].mean() < 0.5


def test_values_and_reference_calibrations():
    rng = np.random.default_rng(0)
    v = rng.normal(10, 2, 5000)
    c = from_values(v, 3.0)
    assert c.threshold == pytest.approx(16, abs=0.3) and c.scale == pytest.approx(2, abs=0.1)
    r = from_reference_scores([1.0, 1.2, 0.8], 1.0)
    assert r.threshold == pytest.approx(1.0 + 0.2) and r.scale == pytest.approx(0.2)
    one = from_reference_scores([2.0], 1.0)  # a single score: the spread floor (5%)
    assert one.threshold == pytest.approx(2.1)
    with pytest.raises(GenadError):
        from_reference_scores([], 1.0)


def test_threshold_for_fpr_and_best_f1_by_hand():
    normal = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    c = threshold_for_fpr(normal, 0.1)
    assert c.threshold == pytest.approx(0.9) and c.expected_fpr == pytest.approx(0.1) and c.recall is None
    assert threshold_for_fpr(normal, 0.0).expected_fpr == 0.0
    scores = [0.1, 0.3, 0.35, 0.6, 0.7, 0.8]
    labels = [0, 0, 1, 0, 1, 1]
    best = threshold_for_best_f1(scores, labels)
    # brute force over every cut
    f1s = []
    for t in np.linspace(0, 1, 2001):
        d = np.array(scores) > t
        tp = int((d & (np.array(labels) == 1)).sum())
        fp = int((d & (np.array(labels) == 0)).sum())
        f1s.append(2 * tp / (2 * tp + fp + 3 - tp))
    assert best.f1 == pytest.approx(max(f1s))
    d = np.array(scores) > best.threshold
    assert (d == np.array([0, 0, 1, 1, 1, 1], bool)).all() or best.f1 == pytest.approx(max(f1s))
    with pytest.raises(GenadError):
        threshold_for_best_f1([0.1, 0.2], [0, 0])
    with pytest.raises(GenadError):
        threshold_for_fpr(normal, 1.5)


def test_every_detector_declares_the_one_threshold_knob():
    import genad
    from genad import registry

    for name in genad.available():
        if not registry.get(name).__module__.startswith("genad."):
            continue  # a test's own detector
        try:
            det = create(name)
        except (GenadError, ImportError):
            continue  # an optional extra is missing; the registry test covers those
        assert "threshold" in type(det).declared, name
        assert det.threshold == 0.5, name
        assert "raw_threshold" in type(det).declared, name
        with pytest.raises(GenadError, match="threshold"):
            create(name, threshold=1.5)


def test_calibrate_command_from_normals_and_from_a_labelled_folder(tmp_path, capsys):
    def run(args):
        return run_cli(args, capsys)

    refs = EXAMPLES / "train" / "good"
    # known-normal data: the test/good images, few-shot against the train references
    code, out, err = run(
        [
            "calibrate",
            EXAMPLES / "test" / "good",
            "--normal",
            refs,
            "-d",
            "baseline",
            "--target-fpr",
            "0",
            "--save",
            tmp_path / "c.json",
        ]
    )
    assert code == 0, err
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["kind"] == "genad-calibration" and saved["detector"] == "baseline"
    assert saved["expected_fpr"] == 0.0 and 0.0 <= saved["threshold"] <= 1.0
    assert "expected false-alarm rate 0.0%" in out
    # a labelled MVTec-style folder: best F1, with recall to expect
    code, out, err = run(["calibrate", EXAMPLES, "--normal", refs, "-d", "baseline", "--save", tmp_path / "f1.json"])
    assert code == 0, err
    f1 = json.loads((tmp_path / "f1.json").read_text())
    assert f1["method"] == "best-f1" and f1["n_anomalous"] == 5 and f1["n_normal"] == 2
    assert f1["recall"] is not None and "expected recall" in out
    # detect with the file: its threshold is -t, and it flags what calibrate said it would
    code, out, err = run(
        [
            "detect",
            EXAMPLES / "test",
            "--normal",
            refs,
            "-d",
            "baseline",
            "--calibration",
            tmp_path / "f1.json",
            "-o",
            tmp_path / "o",
        ]
    )
    assert code == 0, err
    lines = [json.loads(x) for x in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    flagged = [x for x in lines if x["decision"]]
    assert len(flagged) == round(f1["recall"] * 5) + round(f1["expected_fpr"] * 2)
    assert all(x["normalized_score"] > f1["threshold"] for x in flagged)
    # bad files and values: one line, exit 2
    (tmp_path / "bad.json").write_text('{"kind": "genad-calibration", "version": 1, "threshold": 7}')
    code, _, err = run(["detect", EXAMPLES / "test", "-d", "baseline", "--calibration", tmp_path / "bad.json"])
    assert code == 2 and "threshold must be a number in [0, 1]" in err and "Traceback" not in err
    (tmp_path / "no.json").write_text("[1, 2]")
    code, _, err = run(["detect", EXAMPLES / "test", "-d", "baseline", "--calibration", tmp_path / "no.json"])
    assert code == 2 and "not a genad calibration file" in err
    code, _, err = run(["calibrate", EXAMPLES, "-d", "baseline", "--target-fpr", "3"])
    assert code == 2 and "target-fpr" in err
