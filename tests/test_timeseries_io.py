"""Series loaders: CSV/TSV/NPY/TXT, UCR names, NAB windows on the real data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SHARED_DATA
from genad.errors import GenadError
from genad.io.timeseries import (
    load_nab,
    load_series_file,
    load_ucr,
    parse_ucr_name,
    windows_to_ranges,
)
from genad.ops import runs_to_ranges as labels_to_ranges

NAB = SHARED_DATA / "nab"
UCR = SHARED_DATA / "ucr"


def test_parse_ucr_name():
    info = parse_ucr_name("135_UCR_Anomaly_InternalBleeding16_1200_4187_4199.txt")
    assert info == {"id": 135, "name": "InternalBleeding16", "train_end": 1200, "range": (4187, 4200)}
    # names with underscores inside the series name still parse; other names do not
    assert parse_ucr_name("001_UCR_Anomaly_DISTORTED_ECG_v1_100_210_220.txt")["name"] == "DISTORTED_ECG_v1"
    assert parse_ucr_name("nyc_taxi.csv") is None


def test_ucr_file_and_folder(tmp_path):
    p = tmp_path / "007_UCR_Anomaly_Toy_20_30_34.txt"
    p.write_text("\n".join(f"  {v:.3e}" for v in np.arange(50.0)))
    s = load_series_file(p)
    assert s.values.shape == (50,) and s.values[7] == 7.0
    assert s.train_end == 20 and s.truth.ranges == [(30, 35)] and s.truth.label == 1
    real = load_ucr(UCR)
    assert [x.id.split("_")[0] for x in real] == ["135", "136", "137", "138"]
    assert real[1].truth.ranges == [(3198, 3310)] and real[1].train_end == 1600
    assert real[0].values.shape == (7501,) and np.isfinite(real[0].values).all()


def test_ucr_range_past_end_is_an_error(tmp_path):
    p = tmp_path / "1_UCR_Anomaly_Toy_5_30_90.txt"
    p.write_text("\n".join(["1.0"] * 40))
    with pytest.raises(GenadError, match="past the series"):
        load_series_file(p)


def test_nab_slice_matches_windows_by_hand():
    samples = load_nab(NAB, limit=8)  # artificialNoAnomaly (5) then artificialWithAnomaly
    assert len(samples) == 8
    assert all(s.truth.label == 0 and s.truth.ranges == [] for s in samples[:5])
    windows = json.loads((NAB / "labels" / "combined_windows.json").read_text())
    s = samples[5]
    ((t0, t1),) = windows[s.id]
    # recompute the index range independently: first/last timestamp inside the window
    ts = [line.split(",")[0] for line in (NAB / "data" / s.id).read_text().splitlines()[1:]]
    inside = [i for i, t in enumerate(ts) if t0[:19] <= t <= t1[:19]]
    assert s.truth.ranges == [(inside[0], inside[-1] + 1)]
    assert s.values.shape == (len(ts),) and s.timestamps.dtype.kind == "M"
    assert s.class_name == "artificialWithAnomaly"


def test_nab_all_windows_land_inside_their_series():
    samples = load_nab(NAB)
    assert len(samples) == 58 and sum(len(s.values) for s in samples) == 365_558
    assert sum(len(s.truth.ranges) for s in samples) == 116
    assert all(0 <= a < b <= len(s.values) for s in samples for a, b in s.truth.ranges)


def test_csv_columns_time_labels_and_nans(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text(
        "time,temp,pressure,note,is_anomaly\n"
        "2024-01-01 00:00:00,1.5,10,ok,0\n"
        "2024-01-01 00:01:00,,11,ok,1\n"
        "2024-01-01 00:02:00,2.5,12,ok,1\n"
        "2024-01-01 00:03:00,3.5,13,ok,0\n"
    )
    s = load_series_file(p)
    assert s.columns == ["temp", "pressure"] and s.values.shape == (4, 2)
    assert np.isnan(s.values[1, 0]) and s.values[3, 1] == 13
    assert s.timestamps[1] == np.datetime64("2024-01-01T00:01:00")
    assert s.truth.ranges == [(1, 3)]
    one = load_series_file(p, time_col="time", value_cols=["pressure"])
    assert one.values.tolist() == [10, 11, 12, 13] and one.columns == ["pressure"]
    with pytest.raises(GenadError, match="no column named 'speed'"):
        load_series_file(p, value_cols=["speed"])


def test_headerless_csv_tsv_npy_txt(tmp_path):
    (tmp_path / "a.csv").write_text("2024-01-01,1\n2024-01-02,2\n2024-01-03,4\n")
    s = load_series_file(tmp_path / "a.csv")
    assert s.values.tolist() == [1, 2, 4] and s.timestamps is not None
    (tmp_path / "b.tsv").write_text("x\ty\n1\t2\n3\t4\n")
    assert load_series_file(tmp_path / "b.tsv").values.tolist() == [[1, 2], [3, 4]]
    np.save(tmp_path / "c.npy", np.arange(12.0).reshape(6, 2))
    assert load_series_file(tmp_path / "c.npy").values.shape == (6, 2)
    (tmp_path / "d.txt").write_text("1\n2\nnan\n4\n")
    d = load_series_file(tmp_path / "d.txt").values
    assert d.shape == (4,) and np.isnan(d[2])


def test_bad_files_say_what_to_do(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(GenadError, match="empty"):
        load_series_file(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("timestamp,value\n")
    with pytest.raises(GenadError, match="no rows"):
        load_series_file(tmp_path / "h.csv")
    with pytest.raises(GenadError, match="no such file"):
        load_series_file(tmp_path / "missing.csv")
    (tmp_path / "t.txt").write_text("one\ntwo\n")
    with pytest.raises(GenadError, match="cannot read"):
        load_series_file(tmp_path / "t.txt")


def test_load_inputs_dispatches_series(tmp_path):
    from genad.io import load_inputs

    (tmp_path / "s.csv").write_text("timestamp,value\n2024-01-01,1\n2024-01-02,2\n")
    (samples,) = load_inputs([tmp_path / "s.csv"])
    assert samples.modality == "timeseries" and samples.values.tolist() == [1, 2]


def test_labels_to_ranges_and_windows():
    assert labels_to_ranges(np.array([0, 1, 1, 0, 1])) == [(1, 3), (4, 5)]
    ts = np.arange("2024-01-01", "2024-01-11", dtype="datetime64[D]").astype("datetime64[ms]")
    assert windows_to_ranges(ts, [["2024-01-03 00:00:00.000000", "2024-01-05 00:00:00.000000"]]) == [(2, 5)]


def test_time_column_in_another_date_format(tmp_path):
    p = tmp_path / "us.csv"
    p.write_text("date,value\n01/31/2024,1\n02/01/2024,2\n02/02/2024,3\n")
    s = load_series_file(p)  # guessed time column unreadable: the series is kept, by position
    assert s.values.tolist() == [1, 2, 3] and s.timestamps is None and s.columns == ["value"]
    with pytest.raises(GenadError, match="as times: use ISO dates"):
        load_series_file(p, time_col="date")
