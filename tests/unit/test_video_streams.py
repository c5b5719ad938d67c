"""The video-streams benchmark's frame source: N copies of a video decoded by their own threads, one frame of
each stream after the other, each stream in its own order."""

from __future__ import annotations

import numpy as np
import pytest

from transferdet.bench.streams import interleaved, streams_sustained, write_video


def test_streams_are_interleaved_frame_by_frame_each_in_order(tmp_path):
    images = [np.full((32, 48, 3), 40 * k, np.uint8) for k in range(5)]
    video = write_video(images, 7, tmp_path / "v.mp4")  # frames 0 1 2 3 4 0 1
    frames = list(interleaved(video, 3, 9))  # 9 frames a stream: the 7-frame video plays again from its start
    assert len(frames) == 27 and all(f.shape == (32, 48, 3) for f in frames)
    levels = [round(float(f.mean()) / 40) for f in frames]
    assert levels == [k % 7 % 5 for k in range(9) for _ in range(3)]


def test_a_stream_that_cannot_be_read_raises_in_the_reader(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(interleaved(tmp_path / "missing.mp4", 2, 3))


def test_streams_sustained_is_the_most_streams_that_all_got_30_fps():
    rows = [{"streams": n, "sustains_30fps": ok} for n, ok in ((1, True), (2, True), (4, False))]
    assert streams_sustained(rows) == 2
    assert streams_sustained([{"streams": 1, "sustains_30fps": False}]) == 0
