import re
from pathlib import Path

import numpy as np
from PIL import Image

from genad.evaluate import EvalRun, summarise
from genad.report.eval_report import write_eval_report
from genad.run import RunFolder
from genad.types import GroundTruth, ImageSample, Region, Result

OWN = 0.65  # the detector's own raw threshold, except for sample 4 (another batch: 0.28)


def _decide(r: Result, n: int) -> Result:
    """Decide as genad.decision does: logistic normalisation (scale 0.1) around the raw
    threshold, decision = raw > threshold."""
    r.threshold = 0.28 if n == 4 else OWN
    r.normalized_score = float(1 / (1 + np.exp(-(r.score - r.threshold) / 0.1)))
    r.decision = bool(r.score > r.threshold)
    return r


def _make_run(
    tmp_path: Path,
    keep_maps: bool = True,
    write_maps: bool = True,
    masks: bool = True,
    decide: bool = True,
    perfect: bool = False,
) -> EvalRun:
    """10 normals and 6 anomalies (a bright square); scores are known, maps peak on the defect.
    The run folder is written as a run writes it; the summary's headline figures are then set
    by hand so that the page's numbers are known (the decision block and the histogram are the
    ones summarise computed). At the detector's own thresholds the false positives are 007
    (0.9) and 004 (0.3, its batch's threshold is 0.28; its id is a script tag); the false
    negatives 013 (0.02) and 015 (0.6): TP 4, FP 2, FN 2, TN 8. `perfect`: scores that the detector calls all right."""
    rng = np.random.default_rng(0)
    samples, results = [], []
    folder = RunFolder(tmp_path / "run")
    folder.start({})
    normal_scores = [0.1, 0.2, 0.15, 0.05, 0.3, 0.25, 0.12, 0.9, 0.18, 0.22]  # 0.9: the worst FP
    anomal_scores = [0.8, 0.95, 0.7, 0.02, 0.85, 0.6]  # 0.02: the worst FN
    if perfect:
        normal_scores = [min(v, 0.25) for v in normal_scores]
        anomal_scores = [max(v, 0.7) for v in anomal_scores]
    for n, sc in enumerate(normal_scores + anomal_scores):
        label = int(n >= len(normal_scores))
        h, w = (40, 48) if n % 2 else (36, 36)
        img = (rng.random((h, w, 3)) * 60 + 100).astype(np.uint8)
        mask = None
        amap = rng.random((h, w)).astype(np.float32) * 0.2
        if label:
            mask = np.zeros((h, w), bool)
            mask[10:20, 12:22] = True
            img[mask] = 250
            amap[mask] += sc
        sid = f"test/{'crack' if label else 'good'}/{n:03d}.png"
        if n == 4:
            sid = "test/good/<script>alert(1)</script>.png"
        samples.append(
            ImageSample(
                id=sid,
                array=img,
                truth=GroundTruth(label=label, defect_type="crack" if label else "good", mask=mask if masks else None),
            )
        )
        r = Result(
            sid,
            score=sc,
            explanation="looks <b>odd</b>" if n == 7 else None,
            regions=[Region(score=sc, box=(12, 10, 22, 20), index=1)] if label else [],
            anomaly_map=amap if write_maps else None,
        )
        results.append(_decide(r, n) if decide else r)
    results.append(Result("broken", error="decoder failed"))
    samples.append(ImageSample(id="broken", array=np.zeros((8, 8, 3), np.uint8), truth=GroundTruth(label=0)))
    with folder:
        records = [folder.append(s, r, n) for n, (s, r) in enumerate(zip(samples, results))]
    summary, curves = summarise(samples, records, folder)
    if not keep_maps:
        for r in results:
            r.anomaly_map = None
    summary |= {
        "image_auroc": 0.8,
        "image_ap": 0.75,
        "image_f1_max": 0.7,
        "image_f1_threshold": 0.5,
        "pixel_auroc": 0.9,
        "pixel_ap": 0.6,
        "aupro": 0.7,
        "n_images": 17,
        "detector": "embedded",
        "data_dir": "data/<tile>",
        "run_dir": str(folder.path),
        "params": {"api_key": "sk-SECRET-123", "extra_headers": {"Authorization": "Bearer XYZ"}, "shots": 4},
        "usage": {"prompt_tokens": 1234, "completion_tokens": 56},
        "failed": [{"id": "broken", "error": "decoder failed"}],
    }
    return EvalRun(summary, samples, results, folder.path, records=records, curves=curves)


def _gallery_ids(page: str, heading: str) -> list[str]:
    part = page.split(heading, 1)[1].split("<h2>", 1)[0]
    return re.findall(r"<code>(.*?)</code>", part)


FP_HEAD = "False positives: normal images flagged at the detector's own threshold"
FN_HEAD = "False negatives: anomalous images missed at the detector's own threshold"
SCRIPT_ID = "test/good/&lt;script&gt;alert(1)&lt;/script&gt;.png"


def _cells(page: str, cls: str) -> list[str]:
    """The texts of the cells of the table of class `cls`, tags dropped, spaces squeezed."""
    table = page.split(f'<table class="{cls}">', 1)[1].split("</table>", 1)[0]
    cells = re.findall(r"<t[dh]>(.*?)</t[dh]>", table, flags=re.S)
    return [" ".join(re.sub(r"<[^>]+>", " ", c).split()) for c in cells]


def test_report_files_curves_and_galleries(tmp_path):
    run = _make_run(tmp_path)
    index = write_eval_report(tmp_path / "report", run)
    assert index == tmp_path / "report" / "index.html"
    page = index.read_text(encoding="utf-8")
    for name in ("roc.png", "pr.png", "pro.png", "hist.png"):
        with Image.open(tmp_path / "report" / "img" / name) as im:
            im.verify()
        with Image.open(tmp_path / "report" / "img" / name) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
        assert f'src="img/{name}"' in page
    # the galleries hold the real mistakes at the detector's own threshold, worst first
    fp = _gallery_ids(page, FP_HEAD)
    fn = _gallery_ids(page, FN_HEAD)
    assert fp == ["test/good/007.png", SCRIPT_ID]  # 0.9 and 0.3 (flagged by its batch's 0.28)
    assert fn == ["test/crack/013.png", "test/crack/015.png"]  # 0.02, then 0.6 (under 0.65)
    assert "(2 of 10), highest score first" in page and "(2 of 6), lowest score first" in page
    assert "test/good/005.png" not in fp  # 0.25: a high-scoring normal, yet not flagged
    assert "broken" not in fp + fn  # failed samples are listed, not ranked
    assert "Failed samples (1)" in page and "decoder failed" in page
    # each gallery card has its overlay PNG: input | overlay side by side
    with Image.open(tmp_path / "report" / "img" / "fp_01.png") as im:
        a = np.asarray(im.convert("RGB"))
    assert a.shape[1] > a.shape[0] * 1.8
    assert not (tmp_path / "report" / "img" / "fp_03.png").exists()
    # the per-type table and figures
    assert "<td>crack</td>" in page and "Pixel AUROC" in page and "0.8000" in page
    assert "own decisions: precision 0.667, recall 0.667, F1 0.667 (false alarms 2, misses 2)" in page


def test_report_shows_both_thresholds_and_the_confusion_matrix(tmp_path):
    run = _make_run(tmp_path)
    page = write_eval_report(tmp_path / "report", run).read_text(encoding="utf-8")
    d = run.summary["decision"]
    # both thresholds, in both units, named
    assert _cells(page, "thresholds") == [
        "threshold",
        "normalised units (0..1)",
        "raw score units",
        "detector's own",
        "0.5000",  # the calibrated boundary
        "0.6500",  # the median of the raw thresholds used (one image had 0.28)
        "best F1 (chosen in hindsight on these labels)",
        f"{run.summary['image_f1_threshold_normalized']:.4f}",
        "0.5000",  # image_f1_threshold as the summary says
    ]
    assert d["threshold"] == OWN and d["threshold_normalized"] == 0.5
    # the confusion matrix at the detector's own threshold: TP FP / FN TN with their rates
    assert _cells(page, "confusion") == [
        "",
        "anomalous images (6)",
        "normal images (10)",
        "flagged",
        "TP 4 66.7% of anomalous (recall)",
        "FP 2 20.0% of normal (false-alarm rate)",
        "passed",
        "FN 2 33.3% of anomalous (miss rate)",
        "TN 8 80.0% of normal (specificity)",
    ]
    assert "37.5% flagged" in page  # 6 of 16


def test_histogram_counts_and_thresholds_come_from_the_run(tmp_path):
    run = _make_run(tmp_path)
    h = run.curves["histogram"]
    assert h["units"] == "normalized" and h["edges"][0] == 0.0 and h["edges"][-1] == 1.0
    assert len(h["edges"]) == len(h["normal"]) + 1 == len(h["anomalous"]) + 1
    assert sum(h["normal"]) == 10 and sum(h["anomalous"]) == 6  # the failed sample is left out
    assert h["own_threshold"] == 0.5
    assert h["best_f1_threshold"] == run.summary["image_f1_threshold_normalized"]
    # every normalised score lies in the bin the histogram counts it in
    edges = np.asarray(h["edges"])
    for label, key in ((0, "normal"), (1, "anomalous")):
        ns = [r.normalized_score for s, r in zip(run.samples, run.results) if r.ok and s.label == label]
        want = np.bincount(np.clip(np.searchsorted(edges, ns, side="right") - 1, 0, len(edges) - 2), minlength=40)
        assert h[key] == want.tolist()
    # the report draws it; a different histogram gives a different picture
    out = tmp_path / "rep"
    write_eval_report(out, run)
    first = (out / "img" / "hist.png").read_bytes()
    run.curves["histogram"] = {**h, "normal": [0] * 40, "own_threshold": 0.9}
    write_eval_report(out, run)
    assert (out / "img" / "hist.png").read_bytes() != first


def test_no_mistakes_and_no_decisions_say_so(tmp_path):
    page = write_eval_report(tmp_path / "a", _make_run(tmp_path / "p", perfect=True)).read_text(encoding="utf-8")
    assert _gallery_ids(page, FP_HEAD) == [] and _gallery_ids(page, FN_HEAD) == []
    assert page.count("none at the detector's own threshold") == 2
    assert "TP 6" in page and "TN 10" in page
    run = _make_run(tmp_path / "q", decide=False)
    assert run.summary["decision"] is None and run.summary["image_f1_threshold_normalized"] is None
    assert run.curves["histogram"]["units"] == "raw" and run.curves["histogram"]["own_threshold"] is None
    page = write_eval_report(tmp_path / "b", run).read_text(encoding="utf-8")
    assert page.count("none: the detector made no yes/no decisions") == 2
    assert "The detector made no yes/no decisions on labelled images." in page
    assert '<table class="confusion">' not in page


def test_report_escapes_and_masks_secrets(tmp_path):
    page = write_eval_report(tmp_path / "r", _make_run(tmp_path)).read_text(encoding="utf-8")
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>odd</b>" not in page and "&lt;b&gt;odd&lt;/b&gt;" in page
    assert "data/&lt;tile&gt;" in page
    assert "sk-SECRET-123" not in page and "Bearer XYZ" not in page
    assert "1234" in page  # token counts are not secrets


def test_maps_read_from_run_dir_when_not_kept(tmp_path):
    run = _make_run(tmp_path, keep_maps=False)
    out = tmp_path / "r2"
    page = write_eval_report(out, run).read_text(encoding="utf-8")
    assert (out / "img" / "pro.png").exists()  # pixel curves from maps/<n>.npz
    assert "ground truth outlined in green" in page
    with Image.open(out / "img" / "fn_01.png") as im:
        a = np.asarray(im.convert("RGB"))
    green = (a[..., 1] > 200) & (a[..., 0] < 80) & (a[..., 2] < 80)
    assert green.sum() > 10  # the missed defect's outline is drawn


def test_image_level_only_without_masks_or_maps(tmp_path):
    run = _make_run(tmp_path, keep_maps=False, write_maps=False, masks=False)
    out = tmp_path / "r3"
    page = write_eval_report(out, run).read_text(encoding="utf-8")
    assert (out / "img" / "roc.png").exists() and not (out / "img" / "pro.png").exists()
    assert "No anomaly maps were kept" in page
    assert _gallery_ids(page, FP_HEAD)[0] == "test/good/007.png"


def test_rewrite_removes_only_its_own_stale_pictures(tmp_path):
    out = tmp_path / "r4"
    write_eval_report(out, _make_run(tmp_path))
    assert (out / "img" / "fp_02.png").exists() and (out / "img" / "hist.png").exists()
    (out / "img" / "mine.png").write_bytes(b"not ours")
    run = _make_run(tmp_path / "again")
    run.curves = None
    write_eval_report(out, run, gallery_size=1)
    assert not (out / "img" / "fp_02.png").exists() and (out / "img" / "fp_01.png").exists()
    assert not (out / "img" / "hist.png").exists()
    assert (out / "img" / "mine.png").read_bytes() == b"not ours"
