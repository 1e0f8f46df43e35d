"""`genad eval ROOT` on a root of several generated MVTec-style categories: each category run
on its own (the same summary as `genad eval ROOT/<category>`), the mean over categories, the
CSV / markdown / JSON tables, --categories, --resume per category, a failing category beside
finished ones, and the HTML overview."""

import csv
import json
import statistics

import numpy as np
import pytest
from PIL import Image

from foundation_helpers import make_mvtec, normal_image, truncate
from test_cli_detect import run_cli

FIGURES = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "aupro")
# what differs between two runs of the same thing
VOLATILE = {"seconds", "fit_seconds", "predict_seconds", "images_per_second", "peak_rss_mb", "run_dir"}
BASE = ["-d", "baseline", "--shots", "2", "-q"]


def _normal_looking(cat, defect, n, seed):
    """Images labelled anomalous that look normal: the detector misses them, so figures vary."""
    rng = np.random.default_rng(seed)
    (cat / "test" / defect).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(normal_image(rng)).save(cat / "test" / defect / f"n{i}.png")


def make_root(root):
    """a and b with masks, c without (no pixel figures); each misses some of its anomalies."""
    make_mvtec(root / "a", n_train=3, n_good=4, defects={"scratch": 3}, seed=1)
    _normal_looking(root / "a", "scratch", 1, seed=11)
    make_mvtec(root / "b", n_train=3, n_good=4, defects={"stain": 2}, seed=2)
    _normal_looking(root / "b", "faint", 3, seed=12)
    make_mvtec(root / "c", n_train=3, n_good=4, defects={"dent": 3}, seed=3, with_masks=False)
    _normal_looking(root / "c", "dent", 2, seed=13)
    return root


def _stable(summary):
    return {k: v for k, v in summary.items() if k not in VOLATILE}


def _run_root(args, capsys):
    code, out, err = run_cli(["eval", *args], capsys)
    return code, out, err


def test_each_category_as_alone_and_the_mean_over_them(tmp_path, capsys):
    root = make_root(tmp_path / "root")
    j, c, m = tmp_path / "all.json", tmp_path / "all.csv", tmp_path / "all.md"
    code, out, err = _run_root(
        [root, *BASE, "--run-dir", tmp_path / "run", "--json", j, "--csv", c, "--markdown", m], capsys
    )
    assert code == 0, err
    whole = json.loads(j.read_text())
    assert list(whole["categories"]) == ["a", "b", "c"] and whole["failed"] == {}
    assert whole["status"] == {"a": "done", "b": "done", "c": "done"}
    # each category's summary is what `genad eval ROOT/<category>` gives, and its run folder holds it
    for name in ("a", "b", "c"):
        alone = tmp_path / f"{name}.json"
        code, _, err = _run_root([root / name, *BASE, "--run-dir", tmp_path / "alone" / name, "--json", alone], capsys)
        assert code == 0, err
        assert _stable(whole["categories"][name]) == _stable(json.loads(alone.read_text()))
        assert json.loads((tmp_path / "run" / name / "summary.json").read_text()) == whole["categories"][name]
    assert json.loads((tmp_path / "run" / "categories.json").read_text()) == whole

    # the mean of each figure by hand, over the categories that have it
    cats = whole["categories"].values()
    aurocs = [s["image_auroc"] for s in cats]
    assert len(set(aurocs)) > 1 and min(aurocs) < 1.0  # the figures differ: the mean means something
    mean = whole["mean"]
    for k in FIGURES:
        have = [s[k] for s in cats if s[k] is not None]
        assert mean[k] == pytest.approx(sum(have) / len(have), abs=1e-12)
        assert mean["over"][k] == (2 if k.startswith(("pixel", "aupro")) else 3)
    for k in ("precision", "recall", "f1", "accuracy"):
        assert mean["decision"][k] == pytest.approx(statistics.mean(s["decision"][k] for s in cats), abs=1e-12)
    assert whole["n_images"] == sum(s["n_images"] for s in cats) == 8 + 9 + 9
    assert mean["n_categories"] == 3

    # CSV: one row per category and a mean row, at full precision
    rows = list(csv.DictReader(c.open()))
    assert [r["category"] for r in rows] == ["a", "b", "c", "mean"]
    assert [r["status"] for r in rows] == ["done", "done", "done", "mean"]
    for r in rows[:3]:
        s = whole["categories"][r["category"]]
        assert int(r["n_images"]) == s["n_images"] and float(r["decision_f1"]) == s["decision"]["f1"]
        for k in FIGURES:
            assert (r[k] == "") if s[k] is None else float(r[k]) == s[k]
    assert all(float(rows[3][k]) == mean[k] for k in FIGURES)
    assert rows[3]["note"] == "over 3 categories (pixel_auroc, pixel_ap, aupro over 2)"

    # markdown: a paper's table, 4 decimals, the mean in bold, what it is over below
    md = m.read_text().splitlines()
    assert md[0] == "| category | images | " + " | ".join(FIGURES) + " | decision_f1 |"
    b = whole["categories"]["b"]
    assert md[3] == "| b | 9 | " + " | ".join(f"{b[k]:.4f}" for k in FIGURES) + f" | {b['decision']['f1']:.4f} |"
    assert md[4].startswith("| c | 9 | ") and md[4].count("| – ") == 3
    assert md[5] == "| **mean** |  | " + " | ".join(f"**{mean[k]:.4f}**" for k in FIGURES) + (
        f" | **{mean['decision']['f1']:.4f}** |"
    )
    assert "Mean over 3 categories (pixel_auroc, pixel_ap, aupro over 2)." in md
    assert "Detector baseline, 2-shot, seed 0." in md

    # the console: every category's own summary, then the table with its mean row
    assert out.count("baseline on ") == 4 and "all categories" in out
    assert f"{mean['image_auroc']:.4f}" in out.split("all categories", 1)[1]
    assert "mean over 3 categories (pixel_auroc, pixel_ap, aupro over 2)" in out


def test_categories_picks_and_refusals(tmp_path, capsys):
    root = make_root(tmp_path / "root")
    j = tmp_path / "some.json"
    code, out, err = _run_root([root, *BASE, "--categories", "c,a", "--run-dir", tmp_path / "run", "--json", j], capsys)
    assert code == 0, err
    whole = json.loads(j.read_text())
    assert list(whole["categories"]) == ["c", "a"] and whole["mean"]["n_categories"] == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["a", "c", "categories.json"]
    cases = [
        ([root, *BASE, "--categories", "a,zz"], "no category 'zz' in"),
        ([root / "a", *BASE, "--categories", "a"], "is one category: --categories picks from a root"),
        ([root, *BASE, "--categories", " , "], "--categories names no category"),
        ([root, "-d", "baseline", "--model", tmp_path / "m.genad"], "--model is fitted on one category"),
        ([root / "a", *BASE, "--csv", tmp_path / "x.csv"], "--csv and --markdown write the per-category table"),
        ([root, "-d", "nope"], "unknown detector 'nope'"),
        ([root, *BASE, "--run-dir", tmp_path / "run"], "already holds results: pass --resume"),
        ([root, "-d", "baseline", "--shots", "3", "-q", "--run-dir", tmp_path / "run", "--resume"], "different shots"),
    ]
    for args, message in cases:
        code, _, err = _run_root(args, capsys)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
        assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert not (tmp_path / "x.csv").exists()


def test_resume_skips_complete_categories_and_continues_partial_ones(tmp_path, capsys):
    root = make_root(tmp_path / "root")
    run = tmp_path / "run"
    assert _run_root([root, *BASE, "--categories", "a,b", "--run-dir", run], capsys)[0] == 0
    a_results, a_summary = run / "a" / "results.jsonl", run / "a" / "summary.json"
    before = (
        a_results.read_bytes(),
        a_results.stat().st_mtime_ns,
        a_summary.read_bytes(),
        a_summary.stat().st_mtime_ns,
    )
    # b was interrupted after 3 images: no summary, 3 results lines
    b_lines = (run / "b" / "results.jsonl").read_text().splitlines()
    (run / "b" / "results.jsonl").write_text("\n".join(b_lines[:3]) + "\n")
    (run / "b" / "summary.json").unlink()

    j = tmp_path / "all.json"
    code, out, err = _run_root([root, *BASE, "--run-dir", run, "--resume", "--json", j], capsys)
    assert code == 0, err
    whole = json.loads(j.read_text())
    assert whole["status"] == {"a": "skipped", "b": "done", "c": "done"}
    # a was not run again: its files are untouched, its stored summary counts
    after = (a_results.read_bytes(), a_results.stat().st_mtime_ns, a_summary.read_bytes(), a_summary.stat().st_mtime_ns)
    assert after == before
    assert whole["categories"]["a"] == json.loads(a_summary.read_text())
    assert "complete in" in out and "not rerun" in out and "kept" in out
    # b scored only what was missing, and its figures are those of a run of b alone
    b = whole["categories"]["b"]
    assert b["n_resumed"] == 3 and b["n_images"] == 9 and b["n_failed"] == 0
    assert len((run / "b" / "results.jsonl").read_text().splitlines()) == 9
    alone = tmp_path / "b.json"
    assert _run_root([root / "b", *BASE, "--run-dir", tmp_path / "b", "--json", alone], capsys)[0] == 0
    assert {k: v for k, v in _stable(b).items() if k != "n_resumed"} == {
        k: v for k, v in _stable(json.loads(alone.read_text())).items() if k != "n_resumed"
    }
    # a run that is complete everywhere is all skipped, and gives the same table
    j2 = tmp_path / "again.json"
    assert _run_root([root, *BASE, "--run-dir", run, "--resume", "--json", j2], capsys)[0] == 0
    again = json.loads(j2.read_text())
    assert set(again["status"].values()) == {"skipped"} and again["mean"] == whole["mean"]


def test_a_failing_category_is_reported_and_the_others_finish(tmp_path, capsys):
    root = make_root(tmp_path / "root")
    # b: a mask of the wrong size (refused before scoring); d: every test image unreadable
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "b" / "ground_truth" / "stain" / "000_mask.png")
    make_mvtec(root / "d", n_train=3, n_good=2, defects={"x": 2}, seed=4)
    for p in (root / "d" / "test").rglob("*.png"):
        truncate(p, 60)
    j, c = tmp_path / "all.json", tmp_path / "all.csv"
    code, out, err = _run_root([root, *BASE, "--run-dir", tmp_path / "run", "--json", j, "--csv", c], capsys)
    assert code == 1, err
    whole = json.loads(j.read_text())
    assert whole["status"] == {"a": "done", "b": "failed", "c": "done", "d": "failed"}
    assert "is 10x10 but its image" in whole["failed"]["b"]
    assert whole["failed"]["d"].startswith("all 4 images failed")
    assert "b" not in whole["categories"] and whole["categories"]["d"]["n_failed"] == 4
    # a and c are kept and averaged; the failed ones are not
    mean = whole["mean"]
    assert mean["n_categories"] == 2 and mean["over"]["image_auroc"] == 2 and mean["over"]["pixel_auroc"] == 1
    a, cc = whole["categories"]["a"], whole["categories"]["c"]
    assert mean["image_auroc"] == pytest.approx((a["image_auroc"] + cc["image_auroc"]) / 2)
    assert mean["pixel_auroc"] == a["pixel_auroc"]
    assert json.loads((tmp_path / "run" / "a" / "summary.json").read_text()) == a
    rows = {r["category"]: r for r in csv.DictReader(c.open())}
    assert rows["b"]["status"] == "failed" and "is 10x10 but its image" in rows["b"]["note"]
    assert rows["b"]["image_auroc"] == "" and rows["a"]["status"] == "done"
    assert "failed b: mask" in " ".join(out.split()) and "Traceback" not in err


def test_report_overview_links_every_category_report(tmp_path, capsys):
    root = make_root(tmp_path / "root")
    run, rep = tmp_path / "run", tmp_path / "rep"
    assert _run_root([root, *BASE, "--categories", "a", "--run-dir", run], capsys)[0] == 0
    # a is complete (its report comes from its run folder), b and c run now
    code, out, err = _run_root(
        [root, *BASE, "--run-dir", run, "--resume", "--report", rep, "--json", tmp_path / "j.json"], capsys
    )
    assert code == 0, err
    whole = json.loads((tmp_path / "j.json").read_text())
    page = (rep / "index.html").read_text(encoding="utf-8")
    assert f"report: {rep / 'index.html'}" in out
    for name in ("a", "b", "c"):
        assert f'<a href="{name}/index.html">{name}</a>' in page
        sub = (rep / name / "index.html").read_text(encoding="utf-8")
        assert f"genad evaluation: baseline on {root / name}" in sub
        s = whole["categories"][name]
        assert f"{s['image_auroc']:.4f}" in sub and (rep / name / "img" / "hist.png").is_file()
    # the overview's mean row carries the mean figures
    mean_row = page.split('<tr class="mean">', 1)[1].split("</tr>", 1)[0]
    for k in FIGURES:
        assert f"{whole['mean'][k]:.4f}" in mean_row
    assert "over 3 categories (pixel_auroc, pixel_ap, aupro over 2)" in mean_row


def test_python_api_one_independent_call_per_category(tmp_path):
    from genad.engines.baseline import BaselineDetector
    from genad.evaluate import run_benchmark
    from genad.evaluate_root import run_categories, run_category

    root = make_root(tmp_path / "root")
    configured = BaselineDetector(grid=32)
    whole = run_categories(root, configured, shots=2, run_dir=tmp_path / "run", progress=False)
    assert configured.center_ is None  # each category got a clone; the configured one is never fitted
    for name in ("a", "b"):
        alone = run_benchmark(root / name, BaselineDetector(grid=32), shots=2, run_dir=tmp_path / name, progress=False)
        assert _stable(whole["categories"][name]) == _stable(alone.summary)
    assert whole["params"]["grid"] == 32
    # one category: plain arguments in, a plain dict out, failures as a result, not an exception
    out = run_category(str(root / "c"), str(tmp_path / "one"), "baseline", {"grid": 32}, shots=2)
    assert json.loads(json.dumps(out)) == out and out["status"] == "done"
    assert _stable(out["summary"]) == _stable(whole["categories"]["c"]) | {"data_dir": str(root / "c")}
    bad = run_category(tmp_path / "missing", tmp_path / "x", "baseline", shots=2)
    assert bad["status"] == "failed" and "no such folder" in bad["error"] and bad["summary"] is None


def test_an_interrupted_root_keeps_finished_categories_and_resumes(tmp_path, capsys, monkeypatch):
    import genad.evaluate_root as er

    root = make_root(tmp_path / "root")
    run = tmp_path / "run"
    real = er.run_benchmark

    def stopped_at_b(data_dir, *a, **kw):
        if data_dir.name == "b":
            raise KeyboardInterrupt
        return real(data_dir, *a, **kw)

    monkeypatch.setattr(er, "run_benchmark", stopped_at_b)
    code, out, err = _run_root([root, *BASE, "--run-dir", run], capsys)
    assert code == 130 and "interrupted: finished categories and 8 result(s)" in err
    assert f"--run-dir {run} --resume" in err
    kept = json.loads((run / "categories.json").read_text())
    assert kept["status"] == {"a": "done"} and (run / "a" / "summary.json").is_file()
    monkeypatch.setattr(er, "run_benchmark", real)
    code, out, err = _run_root([root, *BASE, "--run-dir", run, "--resume", "--json", tmp_path / "j.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "j.json").read_text())["status"] == {"a": "skipped", "b": "done", "c": "done"}
