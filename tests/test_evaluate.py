"""The benchmark protocol: references, subsampling, resumable results, figures."""

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from foundation_helpers import SUMMARY_KEYS, make_mvtec, truncate
from genad.engines.baseline import BaselineDetector
from genad.errors import GenadError
from genad.evaluate import run_benchmark, stratified_subset
from genad.types import GroundTruth, ImageSample


class Counting(BaselineDetector):
    """The baseline in chunks of 2, remembering which samples it was asked to score."""

    chunk_size = 2

    def __init__(self, stop_after: int | None = None, **kw):
        super().__init__(**kw)
        self.seen: list[str] = []
        self.calls = 0
        self.stop_after = stop_after

    def predict(self, samples):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt  # a crash mid-run
        self.calls += 1
        self.seen.extend(s.id for s in samples)
        return super().predict(samples)


@pytest.fixture
def data(tmp_path):
    return make_mvtec(tmp_path / "toy", n_train=6, n_good=6, defects={"scratch": 4, "stain": 3})


def test_known_anomaly_gives_sensible_figures(data, tmp_path):
    run = run_benchmark(data, "baseline", shots=4, seed=0, run_dir=tmp_path / "run", progress=False)
    s = run.summary
    assert SUMMARY_KEYS <= set(s)
    assert s["image_auroc"] == 1.0 and s["image_ap"] == pytest.approx(1.0) and s["image_f1_max"] == pytest.approx(1.0)
    assert s["pixel_auroc"] > 0.95 and s["aupro"] > 0.8
    # the detector's own threshold, judged against the labels of its decisions
    recs = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r["decision"] for r in recs}
    labels = {smp.id: smp.label for smp in run.samples}
    tp = sum(1 for i, dec in by_id.items() if dec and labels[i] == 1)
    assert s["decision"]["n"] == 13 and s["decision"]["recall"] == pytest.approx(tp / 7)
    assert s["decision"]["false_alarms"] == sum(1 for i, dec in by_id.items() if dec and labels[i] == 0)
    assert s["n_images"] == 13 and s["n_failed"] == 0 and s["shots"] == 4
    assert s["reference_source"] == "train/good" and len(s["references"]) == 4
    assert set(s["per_type"]) == {"good", "scratch", "stain"}
    assert s["per_type"]["scratch"]["n"] == 4 and s["per_type"]["scratch"]["image_auroc"] == 1.0
    assert s["per_type"]["good"]["image_auroc"] is None
    assert s["per_type"]["stain"]["mean_score"] > s["per_type"]["good"]["mean_score"]
    # Files: one line per sample, float16 maps at the image's size, the summary.
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 13 and {"id", "label", "defect_type", "score", "error", "timings"} <= set(json.loads(lines[0]))
    with np.load(tmp_path / "run" / "maps" / "0.npz") as z:
        assert z["map"].dtype == np.float16
    assert run.load_map(0).shape == (48, 64)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["image_auroc"] == 1.0
    assert len(run.samples) == len(run.results) == 13


def test_zero_shot_and_no_masks(tmp_path):
    root = make_mvtec(tmp_path / "t", with_train=False, with_masks=False, n_good=8, defects={"tumor": 3})
    s = run_benchmark(root, "baseline", shots=0, run_dir=tmp_path / "r", progress=False).summary
    assert s["image_auroc"] == 1.0
    assert s["pixel_auroc"] is None and s["aupro"] is None and s["pixel_ap"] is None


def test_references_from_test_good_are_not_scored(tmp_path):
    root = make_mvtec(tmp_path / "t", with_train=False, n_good=6, defects={"tumor": 3})
    run = run_benchmark(root, "baseline", shots=2, seed=5, run_dir=tmp_path / "r", progress=False)
    refs = set(run.summary["references"])
    assert run.summary["reference_source"] == "test/good" and len(refs) == 2
    assert not refs & {s.id for s in run.samples} and run.summary["n_images"] == 7
    again = run_benchmark(root, "baseline", shots=2, seed=5, run_dir=tmp_path / "r2", progress=False)
    assert set(again.summary["references"]) == refs  # the seed decides


def test_too_many_shots(data, tmp_path):
    with pytest.raises(GenadError, match="--shots 7 asks for more normal images than the 6"):
        run_benchmark(data, "baseline", shots=7, run_dir=tmp_path / "r", progress=False)


def test_resume_scores_only_what_is_missing(data, tmp_path):
    run_dir = tmp_path / "run"
    crashing = Counting(stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(data, crashing, shots=2, run_dir=run_dir, progress=False)
    first = crashing.seen
    assert len(first) == 6 and len((run_dir / "results.jsonl").read_text().splitlines()) == 6

    det = Counting()
    run = run_benchmark(data, det, shots=2, run_dir=run_dir, resume=True, progress=False)
    assert len(det.seen) == 7 and not set(det.seen) & set(first)
    assert run.summary["n_resumed"] == 6 and run.summary["n_images"] == 13
    assert run.summary["image_auroc"] == 1.0

    idle = Counting()
    again = run_benchmark(data, idle, shots=2, run_dir=run_dir, resume=True, progress=False)
    assert idle.calls == 0 and again.summary["image_auroc"] == run.summary["image_auroc"]
    assert [r.score for r in again.results] == [r.score for r in run.results]


def test_run_dir_guards(data, tmp_path):
    run_benchmark(data, "baseline", shots=2, run_dir=tmp_path / "r", progress=False)
    with pytest.raises(GenadError, match="already holds results: pass --resume"):
        run_benchmark(data, "baseline", shots=2, run_dir=tmp_path / "r", progress=False)
    with pytest.raises(GenadError, match="cannot resume .* different shots"):
        run_benchmark(data, "baseline", shots=3, run_dir=tmp_path / "r", resume=True, progress=False)


def test_failed_samples_are_counted_listed_and_left_out(data, tmp_path):
    truncate(data / "test" / "stain" / "001.png")
    run = run_benchmark(data, "baseline", shots=2, run_dir=tmp_path / "r", progress=False)
    s = run.summary
    assert s["n_failed"] == 1 and s["n_scored"] == 12
    assert s["failed"][0]["id"] == "test/stain/001.png" and "cannot read image" in s["failed"][0]["error"]
    assert s["image_auroc"] == 1.0 and s["per_type"]["stain"]["n_failed"] == 1
    # Failed samples are retried on resume.
    det = Counting()
    run_benchmark(data, det, shots=2, run_dir=tmp_path / "r", resume=True, progress=False, detector_params=None)
    assert det.seen == ["test/stain/001.png"]


def test_mask_of_the_wrong_size_stops_before_scoring(data, tmp_path):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(data / "ground_truth" / "scratch" / "002_mask.png")
    det = Counting()
    with pytest.raises(GenadError, match="mask .*002_mask.png is 10x10 but its image .* is 64x48"):
        run_benchmark(data, det, shots=1, run_dir=tmp_path / "r", progress=False)
    assert det.calls == 0


def test_limit_is_stratified_and_seeded(data, tmp_path):
    run = run_benchmark(data, "baseline", shots=1, limit=7, seed=3, run_dir=tmp_path / "r", progress=False)
    types = Counter(s.truth.defect_type for s in run.samples)
    assert types == {"good": 3, "scratch": 2, "stain": 2}
    samples = [
        ImageSample(f"{t}{i}", truth=GroundTruth(defect_type=t))
        for t, n in (("a", 10), ("b", 5), ("c", 1))
        for i in range(n)
    ]
    sub = stratified_subset(samples, 8, seed=0)
    assert Counter(s.truth.defect_type for s in sub) == {"a": 5, "b": 2, "c": 1}
    assert [s.id for s in stratified_subset(samples, 8, seed=0)] == [s.id for s in sub]
    assert [s.id for s in stratified_subset(samples, 8, seed=1)] != [s.id for s in sub]


def test_progress_callback_and_bad_arguments(data, tmp_path):
    seen = []
    run_benchmark(
        data, "baseline", shots=1, run_dir=tmp_path / "r", progress=False, on_progress=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (13, 13) and len(seen) == 13
    with pytest.raises(GenadError, match="unknown detector"):
        run_benchmark(data, "nope", run_dir=tmp_path / "x", progress=False)
    with pytest.raises(GenadError, match="holds 2 categories"):
        make_mvtec(tmp_path / "multi" / "b", n_good=1, defects={"x": 1})
        make_mvtec(tmp_path / "multi" / "c", n_good=1, defects={"x": 1})
        run_benchmark(tmp_path / "multi", "baseline", run_dir=tmp_path / "y", progress=False)


def test_secrets_in_params_never_reach_the_files(data, tmp_path):
    class Keyed(BaselineDetector):
        def __init__(self, api_key=None, **kw):
            super().__init__(**kw)
            self.params["api_key"] = api_key

    run = run_benchmark(data, Keyed(api_key="sk-SECRET123"), shots=1, run_dir=tmp_path / "r", progress=False)
    assert run.summary["params"]["api_key"] == "***"
    for f in (tmp_path / "r").glob("*.json*"):
        assert "sk-SECRET123" not in f.read_text()


def test_lmm_usage_is_summed_and_a_broken_chunk_is_only_that_chunk(data, tmp_path):
    from genad.detector import Detector
    from genad.types import Result, Usage

    class Priced(Detector):
        chunk_size = 3

        def __init__(self):
            super().__init__()
            self.calls = 0

        def predict(self, samples):
            self.calls += 1
            if self.calls == 2:
                raise ConnectionError("server went away")
            return [Result(s.id, score=float(s.label), usage=Usage(10, 5, 0.01, 1, 0)) for s in samples]

    run = run_benchmark(data, Priced(), shots=0, run_dir=tmp_path / "r", progress=False)
    s = run.summary
    assert s["n_failed"] == 3 and all("ConnectionError: server went away" in f["error"] for f in s["failed"])
    assert s["usage"]["calls"] == 10 and s["usage"]["prompt_tokens"] == 100
    assert s["usage"]["cost_usd"] == pytest.approx(0.1)
    assert s["image_auroc"] == 1.0 and s["pixel_auroc"] is None  # no maps given


def test_decisions_confusion_and_histogram_against_a_hand_count(data, tmp_path):
    run = run_benchmark(data, "baseline", shots=4, seed=0, run_dir=tmp_path / "run", progress=False)
    s, h = run.summary, run.curves["histogram"]
    recs = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert all(r["decision"] is not None and r["normalized_score"] is not None for r in recs)
    count = Counter((r["label"], r["decision"]) for r in recs)
    d = s["decision"]
    assert (d["tp"], d["fp"], d["tn"], d["fn"]) == (count[1, True], count[0, True], count[0, False], count[1, False])
    assert d["tp"] + d["fn"] == 7 and d["fp"] + d["tn"] == 6
    assert d["false_alarm_rate"] == pytest.approx(count[0, True] / 6)
    assert d["flagged_share"] == pytest.approx((count[1, True] + count[0, True]) / 13)
    assert d["threshold"] == pytest.approx(float(np.median([r["threshold"] for r in recs])))
    assert d["threshold_normalized"] == 0.5  # the baseline's default `threshold`
    # the best-F1 threshold in normalised units gives back the best F1 as a decision threshold
    t = s["image_f1_threshold_normalized"]
    flagged = [r["normalized_score"] > t for r in recs]
    tp = sum(f and r["label"] == 1 for f, r in zip(flagged, recs))
    assert 2 * tp / (sum(flagged) + 7) == pytest.approx(s["image_f1_max"])
    # the histogram: normalised, every scored image counted once, both thresholds in its units
    assert h["units"] == "normalized" and (h["edges"][0], h["edges"][-1]) == (0.0, 1.0)
    assert sum(h["normal"]) == 6 and sum(h["anomalous"]) == 7
    assert h["own_threshold"] == 0.5 and h["best_f1_threshold"] == t
    assert json.loads((tmp_path / "run" / "curves.json").read_text())["histogram"] == h
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["decision"] == d and saved["image_f1_threshold_normalized"] == t


def test_own_threshold_option_and_raw_units_without_normalised_scores(data, tmp_path):
    from genad.detector import Detector
    from genad.types import Result

    strict = run_benchmark(
        data, "baseline", detector_params={"threshold": 0.9}, shots=2, run_dir=tmp_path / "a", progress=False
    )
    assert strict.summary["decision"]["threshold_normalized"] == 0.9
    assert strict.curves["histogram"]["own_threshold"] == 0.9

    class Raw(Detector):
        """Raw scores 0..10 with a fixed raw threshold of 4, no normalised score."""

        def predict(self, samples):
            out = []
            for k, smp in enumerate(samples):
                score = 6.0 + k if smp.label else float(k % 5)  # normals 0..4, one of them 4
                out.append(Result(smp.id, score=score, threshold=3.5, decision=score > 3.5))
            return out

    run = run_benchmark(data, Raw(), shots=0, run_dir=tmp_path / "b", progress=False)
    s, h = run.summary, run.curves["histogram"]
    assert s["image_f1_threshold_normalized"] is None and s["decision"]["threshold_normalized"] is None
    assert s["decision"]["threshold"] == 3.5
    normals = [r.score for r, smp in zip(run.results, run.samples) if smp.label == 0]
    assert s["decision"]["fp"] == sum(v > 3.5 for v in normals)
    assert h["units"] == "raw" and h["own_threshold"] == 3.5 and h["best_f1_threshold"] == s["image_f1_threshold"]
    assert h["edges"][0] == min(normals) and h["edges"][-1] == max(r.score for r in run.results)
    assert sum(h["normal"]) == 6 and sum(h["anomalous"]) == 7
