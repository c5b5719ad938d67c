"""Joint image + box augmentation: determinism, geometry of flips, zoom, translation, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferdet.config.schema import (
    AugmentationConfig,
    ColorAugmentationConfig,
    PreprocessingConfig,
    SpatialAugmentationConfig,
)
from transferdet.data.augment import Augmenter, color_matrix

W, H = 128, 64


def config(**spatial) -> AugmentationConfig:
    return AugmentationConfig(
        preprocessing=PreprocessingConfig(output_image_width=W, output_image_height=H),
        spatial_augmentation=SpatialAugmentationConfig(
            **{"hflip_probability": 0.0, "translate_max_x": 0, "translate_max_y": 0, **spatial}
        ),
        color_augmentation=ColorAugmentationConfig(hue_rotation_max=0, saturation_shift_max=0, contrast_scale_max=0),
    )


def image_with_block(x1, y1, x2, y2, h=H, w=W) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[y1:y2, x1:x2] = 200
    return img


def block_extent(image: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(image[0].numpy() > 0.4)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_same_seed_epoch_and_index_give_the_same_sample():
    cfg = AugmentationConfig(
        preprocessing=PreprocessingConfig(output_image_width=W, output_image_height=H),
        spatial_augmentation=SpatialAugmentationConfig(
            zoom_min=0.8, zoom_max=1.2, rotate_rad_max=0.1, rotate_probability=0.5
        ),
    )
    img = (np.random.default_rng(0).random((H, W, 3)) * 255).astype(np.uint8)
    boxes = np.array([[10, 10, 50, 40]], np.float32)
    a = Augmenter(cfg, train=True, seed=1)(img, boxes, np.array([True]), index=5, epoch=2)
    b = Augmenter(cfg, train=True, seed=1)(img, boxes, np.array([True]), index=5, epoch=2)
    c = Augmenter(cfg, train=True, seed=1)(img, boxes, np.array([True]), index=5, epoch=3)
    assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes)
    assert not torch.equal(a.image, c.image)


def test_horizontal_flip_moves_image_and_boxes_together():
    img = image_with_block(10, 20, 40, 50)
    out = Augmenter(config(hflip_probability=1.0), train=True)(
        img, np.array([[10, 20, 40, 50]], np.float32), np.array([True]), 0
    )
    assert out.boxes.tolist() == [[W - 40, 20, W - 10, 50]]
    assert block_extent(out.image) == (W - 40, 20, W - 10, 50)


def test_zoom_above_one_makes_objects_bigger_and_boxes_follow():
    img = image_with_block(54, 22, 74, 42)  # 20x20 at the canvas centre
    out = Augmenter(config(zoom_min=2.0, zoom_max=2.0), train=True)(
        img, np.array([[54, 22, 74, 42]], np.float32), np.array([True]), 0
    )
    x1, y1, x2, y2 = out.boxes[0].tolist()
    assert (x2 - x1, y2 - y1) == pytest.approx((40, 40), abs=0.5)
    ex = block_extent(out.image)
    assert abs(ex[0] - x1) <= 1 and abs(ex[2] - x2) <= 1 and abs(ex[1] - y1) <= 1 and abs(ex[3] - y2) <= 1


def test_translation_is_an_integer_shift_of_image_and_boxes():
    img = image_with_block(30, 20, 50, 40)
    out = Augmenter(config(translate_max_x=6, translate_max_y=6), train=True, seed=3)(
        img, np.array([[30, 20, 50, 40]], np.float32), np.array([True]), 0
    )
    x1, y1, x2, y2 = out.boxes[0].tolist()
    dx, dy = x1 - 30, y1 - 20
    assert dx == int(dx) and dy == int(dy) and abs(dx) <= 6 and abs(dy) <= 6 and (x2 - x1, y2 - y1) == (20, 20)
    assert block_extent(out.image) == (x1, y1, x2, y2)


def test_evaluation_pads_right_bottom_and_crops_top_left():
    small = image_with_block(5, 5, 15, 15, h=40, w=100)
    out = Augmenter(config(), train=False)(small, np.array([[5, 5, 15, 15]], np.float32), np.array([True]), 0)
    assert out.image.shape == (3, H, W) and out.image[:, 40:, :].max() == 0 and out.image[:, :, 100:].max() == 0
    big = image_with_block(100, 10, 140, 30, h=80, w=200)  # partly beyond the 128-px crop: clipped
    out = Augmenter(config(), train=False)(
        big, np.array([[100, 10, 140, 30], [150, 5, 190, 20]], np.float32), np.array([True, True]), 0
    )
    assert out.boxes.tolist() == [[100, 10, 128, 30]] and out.keep.tolist() == [True, False]


def test_small_boxes_are_dropped_but_ignore_regions_kept():
    cfg = config()
    cfg.preprocessing.min_bbox_width = 5
    out = Augmenter(cfg, train=False)(
        np.zeros((H, W, 3), np.uint8),
        np.array([[10, 10, 13, 30], [20, 10, 23, 30]], np.float32),
        np.array([True, False]),
        0,
    )
    assert out.keep.tolist() == [False, True]


def test_colour_matrix_is_identity_without_jitter_and_bounded_otherwise():
    m, o = color_matrix(np.random.default_rng(0), ColorAugmentationConfig(0, 0, 0, 0.5, 0))
    assert np.allclose(m, np.eye(3), atol=1e-6) and np.allclose(o, 0, atol=1e-6)
    cfg = AugmentationConfig(preprocessing=PreprocessingConfig(output_image_width=W, output_image_height=H))
    out = Augmenter(cfg, train=True, seed=0)(
        (np.random.default_rng(1).random((H, W, 3)) * 255).astype(np.uint8),
        np.zeros((0, 4), np.float32),
        np.zeros(0, bool),
        0,
    )
    assert 0 <= out.image.min() and out.image.max() <= 1


@pytest.mark.parametrize("shape", [(H, W), (H - 10, W + 30), (H + 20, W - 7), (H // 2, W // 2)])
@pytest.mark.parametrize("resize,channels", [(False, 3), (True, 3), (False, 1)])
def test_inference_preprocess_gives_the_evaluation_pixels_exactly(shape, resize, channels):
    """preprocess (the inference fast path) against __call__'s evaluation path, which boxes also go through."""
    cfg = AugmentationConfig(
        preprocessing=PreprocessingConfig(
            output_image_width=W, output_image_height=H, resize=resize, output_image_channel=channels
        )
    )
    aug = Augmenter(cfg, train=False)
    img = (np.random.default_rng(sum(shape)).random((*shape, 3)) * 255).astype(np.uint8)
    fast = aug.preprocess(img)
    reference = aug(img, np.zeros((0, 4), np.float32), np.zeros(0, bool), 0).image
    assert fast.shape == (channels, H, W) and fast.dtype == torch.float32 and fast.is_contiguous()
    assert torch.equal(fast, reference)
    # decoders hand over [h, w, 3] views of [3, h, w] memory: the same pixels
    assert torch.equal(aug.preprocess(np.ascontiguousarray(img.transpose(2, 0, 1)).transpose(1, 2, 0)), fast)
    # into a batch's slot (stale values in it, as a reused buffer would have): the same pixels there
    batch = np.full((2, channels, H, W), 7.0, np.float32)
    aug.preprocess(img, batch[1])
    assert torch.equal(torch.from_numpy(batch[1]), fast) and (batch[0] == 7.0).all()
