"""`genad detect` end to end, and its one-line errors for user mistakes."""

import json
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import ROOT
from foundation_helpers import normal_image, run_cli, truncate
from genad.cli.detect import parse_params

EXAMPLES = ROOT / "examples" / "magnetic_tile"


def test_demo_command_writes_overlays_jsonl_and_index(tmp_path, capsys):
    out = tmp_path / "demo-out"
    code, stdout, err = run_cli(
        ["detect", EXAMPLES / "test", "--normal", EXAMPLES / "train" / "good", "--out", out, "--detector", "baseline"],
        capsys,
    )
    assert code == 0, err
    assert "7 inputs" in stdout and "test/crack/exp6_num_249821.jpg" in stdout
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 7 and all(x["score"] is not None and x["error"] is None for x in lines)
    assert len(list((out / "overlays").glob("*.png"))) == 7
    for x in lines:
        assert (out / x["overlay"]).is_file()
    html = (out / "index.html").read_text()
    assert html.count("data:image/jpeg;base64,") == 7 and "few-shot, 3 normal examples" in html


def test_zero_shot_threshold_and_params(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(normal_image(rng)).save(tmp_path / f"{i}.png")
    img = normal_image(rng)
    img[10:20, 10:20] = 255
    Image.fromarray(img).save(tmp_path / "z_bad.png")
    code, stdout, err = run_cli(
        ["detect", tmp_path, "--detector", "baseline", "--param", "grid=32", "--out", tmp_path / "o"], capsys
    )
    assert code == 0, err
    lines = {
        json.loads(x)["id"].split("/")[-1]: json.loads(x)
        for x in (tmp_path / "o" / "results.jsonl").read_text().splitlines()
    }
    assert lines["z_bad.png"]["decision"] is True
    assert max(lines, key=lambda k: lines[k]["score"]) == "z_bad.png"
    code, stdout, _ = run_cli(
        ["detect", tmp_path, "-d", "baseline", "-p", "raw_threshold=1e9", "--out", tmp_path / "o"], capsys
    )
    assert code == 0 and "5 inputs, 0 anomalous" in stdout  # the overlays in o/ are not inputs
    # -t and -p threshold are one knob, in normalised units: the same decisions, regions and all
    runs = {}
    for flag in (["-t", "0.999"], ["-p", "threshold=0.999"]):
        code, stdout, err = run_cli(["detect", tmp_path, "-d", "baseline", "-o", tmp_path / "t", *flag], capsys)
        assert code == 0, err
        runs[flag[0]] = [json.loads(x) for x in (tmp_path / "t" / "results.jsonl").read_text().splitlines()]
    assert runs["-t"] == runs["-p"] or [(x["decision"], x["threshold"], x["regions"]) for x in runs["-t"]] == [
        (x["decision"], x["threshold"], x["regions"]) for x in runs["-p"]
    ]
    bad = next(x for x in runs["-t"] if x["id"].endswith("z_bad.png"))
    assert bad["normalized_score"] is not None
    assert bad["decision"] is (bad["normalized_score"] > 0.999) and bad["threshold"] > lines["z_bad.png"]["threshold"]
    assert all(not x["regions"] for x in runs["-t"] if not x["decision"])
    # a threshold outside 0..1 or given twice differently is refused in one line
    code, _, err = run_cli(["detect", tmp_path, "-d", "baseline", "-t", "2"], capsys)
    assert code == 2
    code, _, err = run_cli(["detect", tmp_path, "-d", "baseline", "-t", "0.6", "-p", "threshold=0.7"], capsys)
    assert code == 2 and "disagree" in err and "Traceback" not in err


def test_a_truncated_image_is_reported_and_the_rest_go_on(tmp_path, capsys):
    shutil.copytree(EXAMPLES / "test", tmp_path / "in")
    truncate(tmp_path / "in" / "good" / "exp1_num_154549.jpg", 300)
    code, stdout, err = run_cli(
        ["detect", tmp_path / "in", "--normal", EXAMPLES / "train" / "good", "-d", "baseline", "-o", tmp_path / "o"],
        capsys,
    )
    assert code == 0, err
    assert "7 inputs" in stdout and "1 failed" in stdout
    recs = [json.loads(x) for x in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    bad = [r for r in recs if r["error"]]
    assert len(bad) == 1 and bad[0]["id"] == "in/good/exp1_num_154549.jpg" and "cannot read image" in bad[0]["error"]


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    Image.fromarray(normal_image(np.random.default_rng(0))).save(tmp_path / "one.png")
    cases = [
        (["detect", tmp_path / "missing"], "no such file or folder"),
        (["detect", tmp_path / "empty"], "no images, series, point clouds or videos found"),
        (["detect", tmp_path / "one.png", "-d", "nope"], "unknown detector 'nope'"),
        (["detect", tmp_path / "one.png", "-d", "baseline", "--param", "grid"], "bad --param 'grid': write key=value"),
        (
            ["detect", tmp_path / "one.png", "-d", "baseline", "--param", "colour=red"],
            "bad option for detector 'baseline'",
        ),
        (["detect", tmp_path / "one.png", "-d", "baseline"], "give normal references (--normal DIR)"),
        (["detect", tmp_path / "one.png", "--param", "dims=abc"], "bad option for detector 'embedded'"),
        (["detect", tmp_path / "one.png", "--param", "resolution=abc"], "bad option for detector 'embedded'"),
        (["detect", tmp_path / "one.png", "--param", "strides=4"], "offers feature strides 8, 16 and 32"),
        (["detect", tmp_path / "one.png", "-d", "baseline", "--modality", "audio"], "unknown modality"),
    ]
    for args, message in cases:
        code, _, err = run_cli(args, capsys)
        assert code == 2, (args, err)
        assert message in err and "Traceback" not in err, (args, err)
        assert err.startswith("error: ") and err.strip().count("\n") == 0


def test_parse_params():
    assert parse_params(["a=1", "b=0.5", "c=true", "d=lite1", "e=null", "f=[1,2]", "g-h=x=y"]) == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": "lite1",
        "e": None,
        "f": [1, 2],
        "g_h": "x=y",
    }


def test_no_traceback_from_the_real_entry_point(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "genad.cli.main", "detect", str(tmp_path / "nothing-here")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and p.stderr.startswith("error: no such file or folder") and "Traceback" not in p.stderr


def test_series_inputs_get_a_chart_in_the_report(tmp_path, capsys):
    x = np.sin(np.arange(800) / 8.0)
    x[500:510] += 4.0
    np.savetxt(tmp_path / "s.csv", np.c_[np.arange(800), x], delimiter=",", header="t,value", comments="")
    code, stdout, err = run_cli(["detect", tmp_path / "s.csv", "-d", "ts-iforest", "-o", tmp_path / "o"], capsys)
    assert code == 0, err
    (rec,) = [json.loads(x) for x in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert rec["error"] is None and rec["overlay"] == "overlays/s.csv.png"
    assert (tmp_path / "o" / rec["overlay"]).is_file()
    assert any(a <= 505 < b for a, b in rec["ranges"])
    assert (tmp_path / "o" / "index.html").read_text().count("data:image/jpeg;base64,") == 1
