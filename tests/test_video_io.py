"""Video loading: PyAV decoding, rate sampling, frame caps, folders of frames, bad files."""

import numpy as np
import pytest
from PIL import Image

from genad.errors import GenadError
from genad.io.video import load_video, video_frames
from genad.types import VideoSample
from video_helpers import moving_square_frames, write_test_video


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("v") / "clip.mp4", n=40, fps=20)


def test_decodes_every_frame_close_to_the_source(mp4):
    v = load_video(mp4)
    src = moving_square_frames(40)
    assert v.frames.shape == src.shape and v.frames.dtype == np.uint8
    assert v.fps == pytest.approx(20.0)
    assert np.abs(v.frames.astype(int) - src).mean() < 3  # lossy codec, but close
    assert v.meta["frame_index"].tolist() == list(range(40))


def test_sampling_rate_frame_cap_and_size(mp4):
    v = load_video(mp4, fps=5)
    assert v.meta["frame_index"].tolist() == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36] and v.fps == 5
    v = load_video(mp4, max_frames=5)
    idx = v.meta["frame_index"]
    assert len(v.frames) == 5 and idx[0] == 0 and idx[-1] == 39  # spread over the whole video
    v = load_video(mp4, max_side=48)
    assert v.frames.shape[1:] == (32, 48, 3)


def test_folder_of_frames_in_sorted_order(tmp_path):
    src = moving_square_frames(12)
    for i, f in enumerate(src):
        Image.fromarray(f).save(tmp_path / f"f{i:03d}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    v = load_video(tmp_path)
    np.testing.assert_array_equal(v.frames, src)
    v = load_video(tmp_path, max_frames=4)
    assert v.meta["frame_index"].tolist() == [0, 4, 7, 11]
    np.testing.assert_array_equal(v.frames[1], src[4])
    lazy = VideoSample(id="lazy", frame_paths=v.frame_paths)
    np.testing.assert_array_equal(video_frames(lazy), v.frames)


def test_bad_inputs_are_clear_errors(tmp_path, mp4):
    (tmp_path / "junk.mp4").write_bytes(b"\x00not a video" * 50)
    with pytest.raises(GenadError, match="cannot decode video"):
        load_video(tmp_path / "junk.mp4")
    half = mp4.read_bytes()[: mp4.stat().st_size // 3]
    (tmp_path / "cut.mp4").write_bytes(half)
    with pytest.raises(GenadError, match="cannot decode video"):
        load_video(tmp_path / "cut.mp4")
    with pytest.raises(GenadError, match="no such file"):
        load_video(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenadError, match="no image frames"):
        load_video(tmp_path / "empty")
    with pytest.raises(GenadError, match="fps"):
        load_video(mp4, fps=0)
    with pytest.raises(GenadError, match="frames must be uint8"):
        video_frames(VideoSample(id="x", frames=np.zeros((2, 4, 4), np.float32)))
