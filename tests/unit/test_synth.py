"""The synthetic generator: deterministic, honest labels, a fair detection problem."""

from __future__ import annotations

from collections import Counter

import numpy as np

from tests.conftest import small_synth_config
from transferdet.config.schema import SynthStyle
from transferdet.data.kitti import read_label_file
from transferdet.data.synth import generate, render_image


def test_same_seed_same_pixels_and_labels():
    cfg = small_synth_config(3, seed=5)
    for i in range(3):
        (a, la), (b, lb) = render_image(i, cfg), render_image(i, cfg)
        assert np.array_equal(np.asarray(a), np.asarray(b)) and la == lb
    other = render_image(0, small_synth_config(3, seed=6))[0]
    assert not np.array_equal(np.asarray(render_image(0, cfg)[0]), np.asarray(other))


def test_generated_dataset_is_a_fair_detection_problem():
    cfg = small_synth_config(300, seed=1)
    objects = [o for i in range(cfg.num_images) for o in render_image(i, cfg)[1]]
    counts = Counter(o.cls for o in objects)
    # KITTI-like imbalance: cars most, cyclists rarest; dontcare regions exist
    assert counts["car"] > counts["pedestrian"] > counts["cyclist"] > 0 and counts["dontcare"] > 0
    real = [o for o in objects if o.cls != "dontcare"]
    heights = np.array([o.height for o in real])
    assert (heights < 25).mean() > 0.1 and (heights >= 40).mean() > 0.1  # small and large objects
    # every box inside the 384x128 canvas
    assert all(0 <= o.x1 < o.x2 <= 384 and 0 <= o.y1 < o.y2 <= 128 for o in objects)
    # truncation is honest: truncated objects touch a border, untruncated ones do not
    truncated = [o for o in real if o.truncated > 0.05]
    assert truncated and all(o.x1 == 0 or o.x2 == 384 or o.y2 == 128 or o.y1 == 0 for o in truncated)
    assert all(0 < o.x1 and o.x2 < 384 for o in real if o.truncated == 0 and o.y2 < 128)
    # occlusion levels are used, and only the KITTI values 0..2
    assert set(o.occluded for o in real) == {0, 1, 2}
    # perspective: objects whose bottom edge is lower in the image (closer) are taller
    cars = [o for o in real if o.cls == "car" and o.truncated == 0]
    corr = np.corrcoef([o.y2 for o in cars], [o.height for o in cars])[0, 1]
    assert corr > 0.8


def test_generate_writes_kitti_layout(tmp_path):
    counts = generate(small_synth_config(12, seed=2), tmp_path, progress=False)
    pngs = sorted((tmp_path / "image_2").glob("*.png"))
    labels = sorted((tmp_path / "label_2").glob("*.txt"))
    assert [p.stem for p in pngs] == [p.stem for p in labels] == [f"{i:06d}" for i in range(12)]
    read = Counter(o.cls for p in labels for o in read_label_file(p))
    assert read == Counter(counts)


def _kitti_like(num_images: int, seed: int = 0, **kw):
    """synth=kitti's settings at a small size."""
    return small_synth_config(
        num_images,
        seed,
        image_width=312,
        image_height=96,
        min_objects=1,
        max_objects=9,
        min_object_height=6.0,
        style=SynthStyle.textured,
        object_height_median=0.12,
        **kw,
    )


def test_textured_scenes_are_reproducible_and_honestly_labelled():
    cfg = _kitti_like(80, seed=4)
    (a, la), (b, lb) = render_image(3, cfg), render_image(3, cfg)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and la == lb
    objects = [o for i in range(cfg.num_images) for o in render_image(i, cfg)[1]]
    real = [o for o in objects if o.cls != "dontcare"]
    assert all(0 <= o.x1 < o.x2 <= 312 and 0 <= o.y1 < o.y2 <= 96 for o in objects)
    truncated = [o for o in real if o.truncated > 0.05]
    assert truncated and all(o.x1 == 0 or o.x2 == 312 or o.y2 == 96 or o.y1 == 0 for o in truncated)
    assert set(o.occluded for o in real) == {0, 1, 2}
    # KITTI's scales: a log-normal around 12 % of the image height (clipped and occluded ones shift it a little)
    heights = np.array([o.height for o in real if o.truncated == 0]) / 96
    assert 0.08 < np.median(heights) < 0.17 and (heights < 0.08).mean() > 0.1 and (heights > 0.25).mean() > 0.05
    # parked cars seen at an angle: wider boxes than a rear view, rotated towards the camera's axis
    cars = [o for o in real if o.cls == "car" and o.truncated == 0 and o.occluded == 0]
    oblique = [o for o in cars if 0.4 < abs(o.rotation_y + np.pi / 2) < 0.8]
    assert len(oblique) > 10 and np.median([o.width / o.height for o in oblique]) > 1.6


def test_textured_scenes_are_not_flat_colours():
    """Shading, texture and shadows: the flat default's scenes are made of few colours, the textured ones not."""
    flat = np.asarray(render_image(0, small_synth_config(1, seed=2, noise_stddev=0.0))[0])
    textured = np.asarray(render_image(0, _kitti_like(1, seed=2, noise_stddev=0.0))[0])
    distinct = [len(np.unique(im.reshape(-1, 3), axis=0)) / (im.shape[0] * im.shape[1]) for im in (flat, textured)]
    assert distinct[1] > 5 * distinct[0]


def test_blur_and_compression_change_pixels_not_labels():
    sharp_cfg = _kitti_like(4, seed=1)
    soft_cfg = _kitti_like(4, seed=1, blur_max=2.0, jpeg_quality_min=30)
    for i in range(4):
        (sharp, ls), (soft, lsoft) = render_image(i, sharp_cfg), render_image(i, soft_cfg)
        assert ls == lsoft
        grey = [np.asarray(im.convert("L"), np.float32) for im in (sharp, soft)]
        detail = [np.abs(np.diff(g, axis=1)).mean() for g in grey]
        assert detail[1] < detail[0]  # blur (and JPEG's quantisation) remove fine detail
