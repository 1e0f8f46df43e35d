"""`genad eval` on generated and real data, and its one-line errors."""

import importlib.util
import json
import re

import numpy as np
from PIL import Image

from conftest import SHARED_DATA
from foundation_helpers import SUMMARY_KEYS, make_mvtec
from test_cli_detect import run_cli


def test_eval_real_magnetic_tile_writes_every_summary_key(tmp_path, capsys):
    out = tmp_path / "x.json"
    code, stdout, err = run_cli(
        [
            "eval",
            SHARED_DATA / "magnetic_tile",
            "--limit",
            "20",
            "--detector",
            "baseline",
            "--json",
            out,
            "-q",
            "--run-dir",
            tmp_path / "run",
        ],
        capsys,
    )
    assert code == 0, err
    s = json.loads(out.read_text())
    assert SUMMARY_KEYS <= set(s)
    assert s["n_images"] == 20 and s["limit"] == 20 and s["detector"] == "baseline" and s["n_failed"] == 0
    assert set(s["per_type"]) == {"good", "blowhole", "break", "crack", "fray", "uneven"}
    for k in ("image_auroc", "image_ap", "pixel_auroc", "aupro"):
        assert 0.0 <= s[k] <= 1.0
    assert "image_auroc" in stdout and "blowhole" in stdout and f"run dir: {tmp_path / 'run'}" in stdout


def test_eval_generated_with_run_dir_resume_and_report(tmp_path, capsys):
    root = make_mvtec(tmp_path / "toy")
    args = [
        "eval",
        root,
        "-d",
        "baseline",
        "--shots",
        "3",
        "--run-dir",
        tmp_path / "run",
        "-q",
        "--json",
        tmp_path / "s.json",
    ]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "s.json").read_text())["image_auroc"] == 1.0
    code, stdout, err = run_cli(args + ["--resume"], capsys)
    assert code == 0 and "13 resumed" in stdout
    code, stdout, err = run_cli(
        [
            "eval",
            root,
            "-d",
            "baseline",
            "--shots",
            "3",
            "-q",
            "--report",
            tmp_path / "rep",
            "--run-dir",
            tmp_path / "run2",
        ],
        capsys,
    )
    if importlib.util.find_spec("genad.report.eval_report") is not None:
        assert code == 0, err
        assert (tmp_path / "rep" / "index.html").is_file()
        # the page shows the detector's own threshold beside the best-F1 one, in both units,
        # the confusion matrix of its own decisions, the histogram, and only real mistakes
        page = (tmp_path / "rep" / "index.html").read_text(encoding="utf-8")
        summary = json.loads((tmp_path / "run2" / "summary.json").read_text())
        d = summary["decision"]
        assert "<td>detector's own</td><td>0.5000</td>" in page
        assert f"<td>{d['threshold']:.4f}</td>" in page
        assert f"<td>{summary['image_f1_threshold_normalized']:.4f}</td>" in page
        assert f"<td>{summary['image_f1_threshold']:.4f}</td>" in page
        for cell in ("TP", "FP", "FN", "TN"):
            assert f"{cell} {d[cell.lower()]}<div" in page
        assert 'src="img/hist.png"' in page and (tmp_path / "rep" / "img" / "hist.png").is_file()
        recs = [json.loads(x) for x in (tmp_path / "run2" / "results.jsonl").read_text().splitlines()]
        misses = sorted((r["normalized_score"], r["id"]) for r in recs if r["label"] == 1 and not r["decision"])
        alarms = sorted((-r["normalized_score"], r["id"]) for r in recs if r["label"] == 0 and r["decision"])
        for heading, want in (("False positives", alarms), ("False negatives", misses)):
            part = page.split(f"<h2>{heading}", 1)[1].split("<h2>", 1)[0]
            assert re.findall(r"<code>(.*?)</code>", part) == [i for _, i in want[:8]]
            if not want:
                assert "none at the detector's own threshold" in part
    else:
        assert code == 2 and "drop --report" in err


def test_eval_user_mistakes(tmp_path, capsys):
    root = make_mvtec(tmp_path / "toy", n_train=2)
    (tmp_path / "plain").mkdir()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "plain" / "a.png")
    cases = [
        (["eval", tmp_path / "missing"], "no such folder"),
        (["eval", tmp_path / "plain", "-d", "baseline"], "not an MVTec-style dataset"),
        (["eval", root, "-d", "baseline", "--shots", "5"], "--shots 5 asks for more normal images than the 2"),
        (["eval", root, "-d", "nope"], "unknown detector 'nope'"),
        (["eval", root, "-d", "baseline", "--param", "=3"], "bad --param '=3'"),
        (["eval", root, "-d", "baseline", "--resume"], "--resume needs --run-dir"),
    ]
    for args, message in cases:
        code, _, err = run_cli(args, capsys)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
        assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "ground_truth" / "stain" / "000_mask.png")
    code, _, err = run_cli(["eval", root, "-d", "baseline", "--shots", "1"], capsys)
    assert code == 2 and "is 10x10 but its image" in err and "fix or remove the mask" in err
