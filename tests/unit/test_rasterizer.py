"""The ground-truth rasterizer: round trip with the decoder, overlap rule, ignore regions."""

from __future__ import annotations

import numpy as np
import torch

from transferdet.config.schema import RasterizerClassConfig, RasterizerConfig
from transferdet.losses.rasterizer import Rasterizer
from transferdet.postprocess import decode_boxes

W, H = 384, 128
CLASSES = ["car", "pedestrian"]


def rasterizer(**kw) -> Rasterizer:
    cfg = RasterizerConfig(
        target_class_config={
            "car": RasterizerClassConfig(cov_radius_x=0.4, cov_radius_y=0.4),
            "pedestrian": RasterizerClassConfig(),
        },
        **kw,
    )
    return Rasterizer(CLASSES, cfg, width=W, height=H)


def encode(rows, batch_size=1):
    """rows of (image, class, x1, y1, x2, y2)."""
    a = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
    return rasterizer()(a[:, 2:], a[:, 1].long(), a[:, 0].long(), batch_size)


def test_round_trip_recovers_isolated_boxes_within_half_a_pixel():
    boxes = [(0, 0, 20.3, 30.7, 95.2, 90.1), (0, 1, 200.0, 20.0, 230.5, 110.0), (0, 0, 300.0, 60.0, 370.0, 100.0)]
    t = encode(boxes)
    decoded = decode_boxes(t.bbox.view(1, 2, 4, 8, 24).numpy(), 16, 35.0, 0.5, W, H)  # [1, 2, 4, 8, 24]
    for _, k, *box in boxes:
        cells = t.cov[0, k].numpy() > 0
        x1, y1, x2, y2 = box
        # the cells that belong to this box (others belong to the other box of the class)
        near = np.zeros_like(cells)
        jj, ii = np.meshgrid(np.arange(24), np.arange(8))
        near |= (
            ((jj + 0.5) * 16 >= x1 - 16)
            & ((jj + 0.5) * 16 <= x2 + 16)
            & ((ii + 0.5) * 16 >= y1 - 16)
            & ((ii + 0.5) * 16 <= y2 + 16)
        )
        sel = cells & near
        assert sel.sum() >= 1
        got = decoded[0, k][:, sel].T
        assert np.abs(got - np.array(box)).max() < 0.5


def test_coverage_is_an_ellipse_with_soft_edges_and_weights():
    t = encode([(0, 1, 100, 16, 196, 112)])  # 6x6 cells, ellipse radius 3 cells
    cov = t.cov[0, 1]
    assert cov.max() == 1.0 and 0 < cov[cov > 0].min() < 1  # soft, super-sampled edge
    assert t.cov[0, 0].sum() == 0  # other class untouched
    # bbox loss weight = coverage / max(4 csx csy, 1), csx = csy = 3 cells
    assert torch.allclose(t.bbox_weight[0, 1], cov / 36.0)


def test_overlapping_boxes_follow_the_bottom_edge_rule():
    far = (0, 0, 100, 30, 200, 80)  # bottom edge 80
    near = (0, 0, 150, 40, 250, 100)  # bottom edge 100: closer, wins the overlap
    t = encode([near, far])  # input order must not matter
    t2 = encode([far, near])
    assert torch.equal(t.cov, t2.cov) and torch.equal(t.bbox, t2.bbox)
    decoded = decode_boxes(t.bbox.view(1, 2, 4, 8, 24).numpy(), 16, 35.0, 0.5, W, H)[0, 0]
    # a cell in the overlap of the two ellipses: j=11 (x 176..192), i=4 (y 64..80)
    assert t.cov[0, 0, 4, 11] > 0
    assert np.allclose(decoded[:, 4, 11], near[2:], atol=1e-3)
    # the far box keeps cells of its own left part
    assert np.allclose(decoded[:, 3, 7], far[2:], atol=1e-3)


def test_image_without_objects_gives_zero_targets():
    t = rasterizer()(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 2)
    assert t.cov.shape == (2, 2, 8, 24) and t.bbox.shape == (2, 8, 8, 24)
    assert t.cov.sum() == 0 and t.bbox.sum() == 0 and t.bbox_weight.sum() == 0 and t.mask.min() == 1


def test_ignore_regions_zero_the_mask_except_under_objects():
    t = encode([(0, -1, 0, 0, 96, 64), (1, -1, 300, 0, 384, 128), (0, 0, 32, 16, 80, 60)], batch_size=2)
    m = t.mask
    assert m[0, :, 0, 0].eq(0).all()  # inside image 0's region, both classes
    assert m[0, 1, :4, :6].eq(0).all() and m[0, 1, 5:, :].eq(1).all()
    assert m[0, 0][t.cov[0, 0] > 0].eq(1).all()  # the car inside the region keeps its loss
    assert m[1, :, :, 20:].eq(0).all() and m[1, :, :, :18].eq(1).all()


def test_small_boxes_get_the_minimum_radius():
    t = encode([(0, 1, 100, 50, 104, 56)])  # 0.25 x 0.375 cells: far below bbox_min_radius 1
    assert (t.cov[0, 1] > 0).sum() >= 3
