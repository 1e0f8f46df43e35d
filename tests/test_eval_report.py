import re
from pathlib import Path

import numpy as np
from PIL import Image

from genad.evaluate import EvalRun, summarise
from genad.report.eval_report import write_eval_report
from genad.run import RunFolder
from genad.types import GroundTruth, ImageSample, Region, Result


def _make_run(tmp_path: Path, keep_maps: bool = True, write_maps: bool = True, masks: bool = True) -> EvalRun:
    """10 normals and 6 anomalies (a bright square); scores are known, maps peak on the defect.
    The run folder is written as a run writes it; the summary's headline figures are then set
    by hand so that the page's numbers are known."""
    rng = np.random.default_rng(0)
    samples, results = [], []
    folder = RunFolder(tmp_path / "run")
    folder.start({})
    normal_scores = [0.1, 0.2, 0.15, 0.05, 0.3, 0.25, 0.12, 0.9, 0.18, 0.22]  # 0.9: the worst FP
    anomal_scores = [0.8, 0.95, 0.7, 0.02, 0.85, 0.6]  # 0.02: the worst FN
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
        if n == 2:
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
        results.append(r)
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
        "decision": {
            "precision": 0.8,
            "recall": 0.667,
            "f1": 0.727,
            "accuracy": 0.812,
            "false_alarms": 1,
            "misses": 2,
            "n": 16,
        },
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


def test_report_files_curves_and_galleries(tmp_path):
    run = _make_run(tmp_path)
    index = write_eval_report(tmp_path / "report", run)
    assert index == tmp_path / "report" / "index.html"
    page = index.read_text(encoding="utf-8")
    for name in ("roc.png", "pr.png", "pro.png"):
        with Image.open(tmp_path / "report" / "img" / name) as im:
            im.verify()
        with Image.open(tmp_path / "report" / "img" / name) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
        assert f'src="img/{name}"' in page
    fp = _gallery_ids(page, "Worst false positives")
    fn = _gallery_ids(page, "Worst false negatives")
    assert fp[0] == "test/good/007.png"  # the top-scoring normal (0.9)
    assert fn[0] == "test/crack/013.png"  # the lowest-scoring anomaly (0.02)
    assert len(fp) == 8 and len(fn) == 6
    assert "broken" not in fp + fn  # failed samples are listed, not ranked
    assert "Failed samples (1)" in page and "decoder failed" in page
    # each gallery card has its overlay PNG: input | overlay side by side
    with Image.open(tmp_path / "report" / "img" / "fp_01.png") as im:
        a = np.asarray(im.convert("RGB"))
    assert a.shape[1] > a.shape[0] * 1.8
    # the per-type table and figures
    assert "<td>crack</td>" in page and "Pixel AUROC" in page and "0.8000" in page
    assert "own decisions: precision 0.800, recall 0.667, F1 0.727 (false alarms 1, misses 2)" in page


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
    assert _gallery_ids(page, "Worst false positives")[0] == "test/good/007.png"


def test_rewrite_removes_only_its_own_stale_pictures(tmp_path):
    out = tmp_path / "r4"
    write_eval_report(out, _make_run(tmp_path))
    assert (out / "img" / "fp_08.png").exists()
    (out / "img" / "mine.png").write_bytes(b"not ours")
    run = _make_run(tmp_path / "again")
    write_eval_report(out, run, gallery_size=2)
    assert not (out / "img" / "fp_08.png").exists() and (out / "img" / "fp_02.png").exists()
    assert (out / "img" / "mine.png").read_bytes() == b"not ours"
