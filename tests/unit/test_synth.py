"""The synthetic generator: deterministic, honest labels, a fair detection problem."""

from __future__ import annotations

from collections import Counter

import numpy as np

from tests.conftest import small_synth_config
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
