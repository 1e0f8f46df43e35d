"""Folders, MVTec-style datasets, load_inputs dispatch and the GPT-4V case suite."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_DATA
from foundation_helpers import make_mvtec
from genad.errors import GenadError
from genad.io import load_inputs
from genad.io.folder import load_folder
from genad.io.gpt4v_cases import load_gpt4v_cases, loads_lenient
from genad.io.mvtec import load_mvtec, load_mvtec_train
from genad.types import ImageSample


def _img(path, value=100, size=(8, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)
    return path


# -- plain folders --------------------------------------------------------------------------
def test_folder_is_recursive_sorted_and_skips_hidden(tmp_path):
    _img(tmp_path / "b.png")
    _img(tmp_path / "sub" / "a.jpg")
    _img(tmp_path / ".hidden" / "c.png")
    (tmp_path / "notes.txt").write_text("x")
    samples = load_folder(tmp_path)
    assert [s.id for s in samples] == [f"{tmp_path.name}/b.png", f"{tmp_path.name}/sub/a.jpg"]
    assert [s.id for s in load_folder(tmp_path, recursive=False)] == [f"{tmp_path.name}/b.png"]


def test_folder_errors(tmp_path):
    with pytest.raises(GenadError, match="no such folder"):
        load_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenadError, match="no images found"):
        load_folder(tmp_path / "empty")


# -- MVTec-style ----------------------------------------------------------------------------
def test_mvtec_labels_types_and_masks(tmp_path):
    root = make_mvtec(tmp_path / "cat", n_train=3, n_good=2, defects={"scratch": 2, "stain": 1})
    test = load_mvtec(root)
    assert len(test) == 5
    by_id = {s.id: s for s in test}
    good = by_id["test/good/000.png"]
    assert good.label == 0 and good.truth.defect_type == "good" and good.truth.mask_path is None
    bad = by_id["test/scratch/001.png"]
    assert bad.label == 1 and bad.truth.defect_type == "scratch"
    assert bad.truth.mask_path == root / "ground_truth" / "scratch" / "001_mask.png"
    assert bad.mask().sum() == 100  # the 10x10 square
    assert bad.class_name == "cat"
    train = load_mvtec_train(root)
    assert len(train) == 3 and all(s.label == 0 for s in train)


def test_mvtec_accepts_plain_mask_names_and_ok_folders(tmp_path):
    root = make_mvtec(tmp_path / "btad", n_train=1, n_good=0, defects={"ko": 2}, mask_suffix="")
    (root / "test" / "good").rmdir()
    _img(root / "test" / "ok" / "n.png", size=(48, 64))
    test = load_mvtec(root)
    labels = {s.id: (s.label, s.truth.mask_path is not None) for s in test}
    assert labels == {"test/ko/000.png": (1, True), "test/ko/001.png": (1, True), "test/ok/n.png": (0, False)}


def test_mvtec_without_train_or_masks(tmp_path):
    root = make_mvtec(tmp_path / "mri", with_train=False, with_masks=False, defects={"tumor": 2})
    assert load_mvtec_train(root) == []
    assert all(s.truth.mask_path is None for s in load_mvtec(root))


def test_mvtec_multi_category_root(tmp_path):
    make_mvtec(tmp_path / "a", n_good=1, defects={"x": 1})
    make_mvtec(tmp_path / "b", n_good=1, defects={"y": 1})
    ids = sorted(s.id for s in load_mvtec(tmp_path))
    assert ids == ["a/test/good/000.png", "a/test/x/000.png", "b/test/good/000.png", "b/test/y/000.png"]


def test_mvtec_not_a_dataset(tmp_path):
    _img(tmp_path / "x.png")
    with pytest.raises(GenadError, match="not an MVTec-style dataset"):
        load_mvtec(tmp_path)


def test_real_magnetic_tile_counts():
    root = SHARED_DATA / "magnetic_tile"
    test = load_mvtec(root)
    assert len(test) == 868 and sum(s.label == 0 for s in test) == 476
    assert all(s.truth.mask_path is not None for s in test if s.label == 1)
    assert len(load_mvtec_train(root)) == 476


# -- load_inputs ----------------------------------------------------------------------------
def test_load_inputs_dispatches_by_suffix(tmp_path):
    _img(tmp_path / "d" / "a.png")
    np.savetxt(
        tmp_path / "d" / "s.csv",
        np.c_[np.arange(50), np.sin(np.arange(50))],
        delimiter=",",
        header="t,value",
        comments="",
    )
    (tmp_path / "d" / "c.xyz").write_text("\n".join(f"{i} {i * 2} {i * 3}" for i in range(10)))
    samples = load_inputs([tmp_path / "d"])
    kinds = {s.id.split("/")[-1]: s.modality for s in samples}
    assert kinds == {"a.png": "image", "s.csv": "timeseries", "c.xyz": "pointcloud"}
    cloud = next(s for s in samples if s.modality == "pointcloud")
    assert cloud.points.shape == (10, 3) and cloud.id == "d/c.xyz"
    assert isinstance(samples[0], ImageSample) and samples[0].load().shape == (8, 10, 3)


def test_load_inputs_modality_override(tmp_path):
    np.save(tmp_path / "cloud.npy", np.random.default_rng(0).normal(size=(20, 3)))
    (s,) = load_inputs([tmp_path / "cloud.npy"], modality="pointcloud")
    assert s.modality == "pointcloud" and s.points.shape == (20, 3)
    (t,) = load_inputs([tmp_path / "cloud.npy"], modality="timeseries")
    assert t.modality == "timeseries"


def test_load_inputs_errors(tmp_path):
    with pytest.raises(GenadError, match="no such file or folder"):
        load_inputs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenadError, match="no images, series, point clouds or videos found"):
        load_inputs([tmp_path / "empty"])
    (tmp_path / "x.weird").write_text("?")
    with pytest.raises(GenadError, match="pass --modality"):
        load_inputs([tmp_path / "x.weird"])
    with pytest.raises(GenadError, match="unknown modality"):
        load_inputs([tmp_path], modality="audio")


def test_duplicate_names_get_unique_ids(tmp_path):
    a = _img(tmp_path / "a" / "x.png")
    b = _img(tmp_path / "b" / "x.png")
    assert [s.id for s in load_inputs([a, b])] == ["x.png", "x.png#2"]


def test_missing_modality_module_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "v.mp4").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "genad.io.video", None)  # import now fails as if absent
    with pytest.raises(GenadError, match=r"genad\[video\]"):
        load_inputs([tmp_path / "v.mp4"])


# -- GPT-4V cases ---------------------------------------------------------------------------
def test_lenient_json_drops_trailing_commas_only_outside_strings():
    text = '{"a": [1, 2, ], "b": {"c": "x, }", }, "d": "trailing,]",\n}'
    assert loads_lenient(text) == {"a": [1, 2], "b": {"c": "x, }"}, "d": "trailing,]"}
    assert loads_lenient('{"q": "say \\"hi\\", }"}') == {"q": 'say "hi", }'}
    with pytest.raises(json.JSONDecodeError):
        loads_lenient('{"a": 1,, }')


def test_real_gpt4v_suite():
    cases = load_gpt4v_cases(SHARED_DATA / "gpt4v_cases")
    by_id = {c.id: c for c in cases}
    usable = [c for c in cases if c.usable]
    assert len(usable) == 20  # the 20 cases with a label.json
    bottle = by_id["Industrial-AD/Case1"]
    assert (bottle.dataset, bottle.category) == ("MVTec AD", "Bottle")
    assert set(bottle.prompts) == {"zero-shot", "one-shot"}
    assert set(bottle.prompts["one-shot"]) == {"naive", "with class_information", "with human expertise"}
    assert bottle.normal.name == "normal.png" and bottle.abnormal.name == "abnormal.png"
    assert bottle.normal_standards.startswith("Normally, the image given should depict clear")
    loco = by_id["Logical-AD/Case1"]
    assert "should obey the following rules" in loco.prompts["zero-shot"]["with human expertise"]
    al = by_id["Industrial-AL/Case3"]
    assert al.is_localisation and al.prompt and al.som.name == "abnormal_som.png"
    mri = by_id["Medical-AD/Head MRI"]
    assert mri.normal.name == "7 no.jpg" and mri.abnormal.name == "Y90.jpg"
    ct = by_id["Medical-AD/Head CT"]
    assert (ct.normal.name, ct.abnormal.name) == ("162.png", "044.png")
    assert by_id["Medical-AL/MOOD2020/Case2"].som.name == "brain_3_slice_127_SOM.png"
    # Absent upstream files are reported, not fatal.
    assert any("RetinaOCT_One-shot.png" in m for m in by_id["Medical-AD/Retina OCT"].missing)
    endo = by_id["Medical-AL/EndoTect"]
    assert not endo.usable and "set-of-mark image" in endo.missing and endo.mask is not None


def test_gpt4v_errors(tmp_path):
    with pytest.raises(GenadError, match="no such folder"):
        load_gpt4v_cases(tmp_path / "nope")
    (tmp_path / "Cases" / "T" / "C").mkdir(parents=True)
    (tmp_path / "Cases" / "T" / "C" / "label.json").write_text('{"dataset": ')
    with pytest.raises(GenadError, match="cannot parse"):
        load_gpt4v_cases(tmp_path)


def test_video_modality_reads_frame_folders(tmp_path):
    for clip in ("c1", "c2"):
        for i in range(3):
            _img(tmp_path / "clips" / clip / f"{i:02d}.png", value=50 * i)
    (one,) = load_inputs([tmp_path / "clips" / "c1"], modality="video")
    assert one.modality == "video" and one.id == "c1" and one.frames.shape[0] == 3
    both = load_inputs([tmp_path / "clips"], modality="video")
    assert [v.id for v in both] == ["clips/c1", "clips/c2"]
    assert [s.modality for s in load_inputs([tmp_path / "clips"])] == ["image"] * 6


def test_a_stray_text_file_beside_images_is_skipped_with_a_warning(tmp_path, caplog):
    _img(tmp_path / "a.png")
    (tmp_path / "README.txt").write_text("these are my photos\nof parts\n")
    with caplog.at_level("WARNING", logger="genad.io"):
        samples = load_inputs([tmp_path])
    assert [s.id for s in samples] == [f"{tmp_path.name}/a.png"]
    assert "skipped" in caplog.text and "README.txt" in caplog.text
    with pytest.raises(GenadError):  # named explicitly, it is an error
        load_inputs([tmp_path / "README.txt"])
