"""Point-cloud loaders: PLY (ascii, binary LE/BE), PCD (ascii, binary), XYZ/CSV, NPY, organised TIFF."""

import numpy as np
import pytest

from genad.errors import GenadError
from genad.io.pointcloud import load_point_cloud, read_ply, write_ply

PTS = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [-1.5, 0.25, 4.0], [2.0, -3.0, 0.5]])
RGB = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=np.uint8)


def test_ply_binary_round_trip_with_colors_and_labels(tmp_path):
    p = write_ply(tmp_path / "a.ply", PTS, RGB, binary=True, extra={"label": np.array([0, 1, 0, 1])})
    s = load_point_cloud(p)
    np.testing.assert_allclose(s.points, PTS, atol=1e-6)
    np.testing.assert_array_equal(s.colors, RGB)
    assert s.truth.point_labels.tolist() == [False, True, False, True] and s.truth.label == 1


def test_ply_ascii_with_faces_after_vertices(tmp_path):
    text = "\n".join(
        [
            "ply",
            "format ascii 1.0",
            "comment made by hand",
            "element vertex 4",
            "property float x",
            "property float y",
            "property float z",
            "property uchar red",
            "property uchar green",
            "property uchar blue",
            "element face 1",
            "property list uchar int vertex_indices",
            "end_header",
            *[" ".join(map(str, [*p, *c])) for p, c in zip(PTS, RGB)],
            "3 0 1 2",
            "",
        ]
    )
    (tmp_path / "b.ply").write_text(text)
    s = load_point_cloud(tmp_path / "b.ply")
    np.testing.assert_allclose(s.points, PTS)
    np.testing.assert_array_equal(s.colors, RGB)


def test_ply_big_endian_double_with_a_list_element_first(tmp_path):
    header = (
        b"ply\nformat binary_big_endian 1.0\nelement face 2\nproperty list uchar int vertex_indices\n"
        b"element vertex 4\nproperty double x\nproperty double y\nproperty double z\nend_header\n"
    )
    faces = b"".join(np.array([3], ">u1").tobytes() + np.array([0, 1, 2], ">i4").tobytes() for _ in range(2))
    body = PTS.astype(">f8").tobytes()
    (tmp_path / "c.ply").write_bytes(header + faces + body)
    np.testing.assert_allclose(load_point_cloud(tmp_path / "c.ply").points, PTS)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"plx\nformat ascii 1.0\n", "not a PLY file"),
        (b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n", "no 'end_header'"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty quaternion x\nend_header\n", "unknown property type"),
        (b"ply\nformat weird 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n", "unknown format"),
        (
            b"ply\nformat binary_little_endian 1.0\nelement vertex 100\nproperty float x\nproperty float y\n"
            b"property float z\nend_header\n\x00\x00",
            "truncated",
        ),
    ],
)
def test_unreadable_ply_is_a_clear_error(tmp_path, content, match):
    (tmp_path / "bad.ply").write_bytes(content)
    with pytest.raises(GenadError, match=match):
        load_point_cloud(tmp_path / "bad.ply")


def test_pcd_ascii_and_binary_with_packed_rgb(tmp_path):
    packed = ((RGB[:, 0].astype(np.uint32) << 16) | (RGB[:, 1].astype(np.uint32) << 8) | RGB[:, 2]).view(np.float32)
    head = "VERSION .7\nFIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\nWIDTH 4\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 4\n"
    rec = np.empty(4, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4")])
    for i, k in enumerate("xyz"):
        rec[k] = PTS[:, i]
    rec["rgb"] = packed
    (tmp_path / "b.pcd").write_bytes((head + "DATA binary\n").encode() + rec.tobytes())
    s = load_point_cloud(tmp_path / "b.pcd")
    np.testing.assert_allclose(s.points, PTS)
    np.testing.assert_array_equal(s.colors, RGB)
    rows = "\n".join(f"{x} {y} {z} 0" for x, y, z in PTS)
    (tmp_path / "a.pcd").write_text(head.replace("rgb", "intensity") + "DATA ascii\n" + rows + "\n")
    np.testing.assert_allclose(load_point_cloud(tmp_path / "a.pcd").points, PTS)
    ints = (RGB[:, 0].astype(np.uint32) << 16) | (RGB[:, 1].astype(np.uint32) << 8) | RGB[:, 2]
    rows = "\n".join(f"{x} {y} {z} {c}" for (x, y, z), c in zip(PTS, ints))
    (tmp_path / "u.pcd").write_text(head.replace("TYPE F F F F", "TYPE F F F U") + "DATA ascii\n" + rows + "\n")
    np.testing.assert_array_equal(load_point_cloud(tmp_path / "u.pcd").colors, RGB)
    (tmp_path / "v.pcd").write_text(head + "DATA binary_packed\n")
    with pytest.raises(GenadError, match="binary_packed.*not supported"):
        load_point_cloud(tmp_path / "v.pcd")


def test_pcd_binary_compressed_as_pcl_writes_it(tmp_path):
    import lzf

    n = 500
    rng = np.random.default_rng(0)
    pts = np.round(rng.uniform(-1, 1, (n, 3)), 2).astype(np.float32)
    rgb = rng.integers(0, 256, (n, 3)).astype(np.uint32)
    packed = ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).astype(np.uint32).view(np.float32)
    # PCL's layout: each field for all points in turn, then LZF
    soa = pts[:, 0].tobytes() + pts[:, 1].tobytes() + pts[:, 2].tobytes() + packed.tobytes()
    comp = lzf.compress(soa)
    assert comp is not None and len(comp) < len(soa)
    head = (
        f"VERSION .7\nFIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\nWIDTH {n}\n"
        f"HEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA binary_compressed\n"
    )
    body = np.array([len(comp), len(soa)], "<u4").tobytes() + comp
    (tmp_path / "c.pcd").write_bytes(head.encode() + body)
    s = load_point_cloud(tmp_path / "c.pcd")
    np.testing.assert_array_equal(s.points, pts)
    np.testing.assert_array_equal(s.colors, rgb)
    (tmp_path / "t.pcd").write_bytes(head.encode() + body[: len(body) // 2])
    with pytest.raises(GenadError, match="truncated"):
        load_point_cloud(tmp_path / "t.pcd")
    bad = bytearray(body)
    bad[8:40] = b"\xff" * 32
    (tmp_path / "x.pcd").write_bytes(head.encode() + bytes(bad))
    with pytest.raises(GenadError, match="corrupt"):
        load_point_cloud(tmp_path / "x.pcd")


def test_xyz_csv_and_npy(tmp_path):
    (tmp_path / "a.xyz").write_text("\n".join(" ".join(map(str, p)) for p in PTS))
    np.testing.assert_allclose(load_point_cloud(tmp_path / "a.xyz").points, PTS)
    (tmp_path / "a.csv").write_text("x,y,z,r,g,b\n" + "\n".join(",".join(map(str, [*p, *c])) for p, c in zip(PTS, RGB)))
    s = load_point_cloud(tmp_path / "a.csv")
    np.testing.assert_allclose(s.points, PTS)
    np.testing.assert_array_equal(s.colors, RGB)
    np.save(tmp_path / "a.npy", PTS)
    np.testing.assert_allclose(load_point_cloud(tmp_path / "a.npy").points, PTS)
    (tmp_path / "bad.csv").write_text("1 2 3\n4 5\n")
    with pytest.raises(GenadError, match="same number"):
        load_point_cloud(tmp_path / "bad.csv")


def test_organised_tiff_drops_zeros_and_keeps_pixel_index(tmp_path):
    import tifffile

    grid = np.zeros((3, 4, 3), np.float32)
    grid[0, 1] = (1, 2, 3)
    grid[2, 3] = (4, 5, 6)
    grid[1, 2] = (np.nan, 0, 0)
    tifffile.imwrite(tmp_path / "scan.tiff", grid, photometric="rgb")
    s = load_point_cloud(tmp_path / "scan.tiff")
    np.testing.assert_allclose(s.points, [[1, 2, 3], [4, 5, 6]])
    assert s.meta["pixel_index"].tolist() == [1, 11] and s.meta["grid_shape"] == (3, 4)


def test_nan_points_are_dropped_and_counted_and_empty_clouds_refused(tmp_path):
    pts = PTS.copy()
    pts[1, 2] = np.nan
    np.save(tmp_path / "n.npy", pts)
    s = load_point_cloud(tmp_path / "n.npy")
    assert len(s.points) == 3 and s.meta["n_dropped"] == 1
    with pytest.raises(GenadError, match="NaN"):
        load_point_cloud(tmp_path / "n.npy", drop_invalid=False)
    np.save(tmp_path / "all_nan.npy", np.full((5, 3), np.nan))
    with pytest.raises(GenadError, match="every point"):
        load_point_cloud(tmp_path / "all_nan.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(GenadError, match="no points"):
        load_point_cloud(tmp_path / "empty.npy")
    with pytest.raises(GenadError, match="no such file"):
        load_point_cloud(tmp_path / "missing.ply")
    with pytest.raises(GenadError, match="unknown point cloud format"):
        load_point_cloud(_touch(tmp_path / "x.obj"))


def test_read_ply_gives_all_vertex_properties(tmp_path):
    p = write_ply(tmp_path / "s.ply", PTS, binary=False, extra={"score": np.arange(4.0)})
    cols = read_ply(p)
    assert set(cols) == {"x", "y", "z", "score"}
    np.testing.assert_allclose(cols["score"], [0, 1, 2, 3])


def _touch(p):
    p.write_text("")
    return p
