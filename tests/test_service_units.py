"""Small parts of the service, checked directly: names, folders, colour scale, store, uploads."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genad.report.overlay import threshold_scale
from genad.service.jobs import AccessDenied, DataRoots, NotFound
from genad.service.store import Inspection, Store, is_id, new_id
from genad.service.uploads import PayloadTooLarge, UnsupportedMedia, decode_image, display_name
from service_helpers import png, texture


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("/abs/path/part 7.png", "part 7.png"),
        ("..", None),
        ("", None),
        (None, None),
        ("bad\x00name\n.png", "badname.png"),
    ],
)
def test_display_name_keeps_only_a_harmless_last_component(raw: str | None, shown: str | None) -> None:
    assert display_name(raw) == shown


def test_ids_are_server_made_hex() -> None:
    a, b = new_id(), new_id()
    assert a != b and is_id(a) and is_id(b)
    assert not is_id("../" + a[3:]) and not is_id(a.upper()) and not is_id(a[:-1])


def test_data_roots_contain_requests(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "cat" / "sub").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", root / "escape")
    roots = DataRoots([root])
    assert roots.resolve("cat/sub") == (root / "cat" / "sub").resolve()
    assert roots.resolve(str(root / "cat")) == (root / "cat").resolve()
    assert roots.resolve(".") == root.resolve()
    for bad in ("../secret", "escape", str(tmp_path / "secret"), "cat/../../secret"):
        with pytest.raises(AccessDenied):
            roots.resolve(bad)
    with pytest.raises(NotFound):
        roots.resolve("cat/missing")
    with pytest.raises(AccessDenied, match="--data-root"):
        DataRoots([]).resolve("cat")


def test_map_range_puts_the_threshold_mid_scale() -> None:
    amap = np.array([[0.2, 0.5], [0.6, 1.4]], np.float32)
    lo, hi = threshold_scale(amap, threshold=0.8, at=0.5, saturate=True)
    assert (lo, hi) == pytest.approx((0.2, 1.4))
    assert (0.8 - lo) / (hi - lo) == pytest.approx(0.5)
    # a map wholly below its threshold tops out below the middle of the scale
    lo, hi = threshold_scale(np.array([[0.0, 0.3]], np.float32), threshold=1.0, at=0.5, saturate=True)
    assert (0.3 - lo) / (hi - lo) < 0.5
    assert threshold_scale(np.array([[1.0, 3.0]], np.float32), None, at=0.5, saturate=True) == (1.0, 3.0)
    assert threshold_scale(np.full((2, 2), np.nan, np.float32), 0.5, at=0.5, saturate=True) == (0.0, 1.0)
    assert threshold_scale(np.ones((2, 2), np.float32), None, at=0.5, saturate=True) == (1.0, 2.0)


def test_store_round_trip_and_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "db" / "x.sqlite3")
    for k in range(3):
        store.add_inspection(
            Inspection(
                id=new_id(),
                created=100.0 + k,
                filename=f"f{k}.png",
                detector="baseline",
                params={"grid": 8},
                n_normals=k,
                width=4,
                height=3,
                result={"score": float(k)},
                has_heatmap=bool(k % 2),
            )
        )
    listed = store.list_inspections(limit=2)
    assert [i.filename for i in listed] == ["f2.png", "f1.png"]
    assert listed[1].params == {"grid": 8} and listed[1].has_heatmap is True
    assert store.count_inspections() == 3
    store.close()
    again = Store(tmp_path / "db" / "x.sqlite3")
    assert [i.result["score"] for i in again.list_inspections(limit=5, offset=1)] == [1.0, 0.0]
    with pytest.raises(ValueError):
        again.update_job("x", **{"status; DROP TABLE jobs": "y"})


def test_decode_image_checks_content_and_size() -> None:
    arr = texture(1, size=40)
    assert np.array_equal(decode_image(png(arr), "f", max_pixels=10_000), arr)
    grey = io.BytesIO()
    Image.fromarray(arr[..., 0]).save(grey, format="JPEG")
    assert decode_image(grey.getvalue(), "f", 10_000).shape == (40, 40, 3)
    with pytest.raises(PayloadTooLarge, match="megapixels"):
        decode_image(png(arr), "f", max_pixels=1000)
    with pytest.raises(UnsupportedMedia):
        decode_image(b"%PDF-1.4 not an image", "f", 10_000)
    with pytest.raises(UnsupportedMedia):
        decode_image(png(arr)[:200], "f", 10_000)  # truncated
    with pytest.raises(UnsupportedMedia, match="empty"):
        decode_image(b"", "f", 10_000)
    ico = io.BytesIO()
    Image.fromarray(arr).save(ico, format="ICO")
    with pytest.raises(UnsupportedMedia, match="ICO"):
        decode_image(ico.getvalue(), "f", 10_000)


def test_serve_cli_refuses_a_missing_data_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from genad.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--storage", str(tmp_path / "s"), "--data-root", str(tmp_path / "nope")])
    assert e.value.code == 2
    assert "--data-root" in capsys.readouterr().err
    main(["serve", "--help"])  # prints the options and returns (no server started)
    out = capsys.readouterr().out
    assert "--max-upload-mb" in out and "--data-root" in out and "--storage" in out
