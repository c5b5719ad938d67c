"""The device-side input path (decoding, upload, preprocessing as tensor operations) computes what the host path
computes: checked here on the CPU, the same code a GPU runs (its nvJPEG decoding is checked in test_gpu.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from transferdet.config.schema import AugmentationConfig, PreprocessingConfig
from transferdet.data.augment import Augmenter
from transferdet.data.images import decode_rgb
from transferdet.errors import DataError
from transferdet.inference.device import decode_batch, image_size, preprocess_batch

W, H = 96, 48
CPU = torch.device("cpu")


def images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)  # smaller, larger and exactly the canvas, odd sizes included
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((37, 61), (80, 150), (H, W), (48, 200))]


def host(pre: PreprocessingConfig) -> torch.Tensor:
    augmenter = Augmenter(AugmentationConfig(preprocessing=pre), train=False)
    return torch.stack([augmenter.preprocess(im) for im in images()])


def config(**kw) -> PreprocessingConfig:
    return PreprocessingConfig(output_image_width=W, output_image_height=H, **kw)


@pytest.mark.parametrize("channels", [3, 1])
def test_crop_and_pad_as_tensor_operations_are_the_host_floats(channels):
    pre = config(output_image_channel=channels)
    expected = host(pre)
    for given in (images(), [torch.from_numpy(im).permute(2, 0, 1) for im in images()]):  # arrays or tensors
        out = preprocess_batch(given, pre, W, H, CPU)
        assert out.shape == (4, channels, H, W) and out.dtype == torch.float32
        assert torch.equal(out, expected)


def test_resize_as_tensor_operations_is_within_one_level_of_the_host():
    pre = config(resize=True)
    out, expected = preprocess_batch(images(), pre, W, H, CPU), host(pre)
    assert out.shape == expected.shape
    assert float((out - expected).abs().max()) <= 1 / 255 + 1e-6
    assert float((out - expected).abs().mean()) < 0.2 / 255  # rounding, not a shifted or mis-scaled image


def encoded(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def test_decode_batch_on_the_host_decodes_as_every_stage_does():
    ims = images()
    datas = [encoded(ims[0], "PNG"), encoded(ims[1], "JPEG")]
    out = decode_batch(datas, CPU)
    assert np.array_equal(out[0], ims[0])
    assert np.array_equal(out[1], decode_rgb(datas[1], "x"))
    assert [image_size(im) for im in out] == [(61, 37), (150, 80)]
    assert image_size(torch.zeros(3, 37, 61, dtype=torch.uint8)) == (61, 37)
    with pytest.raises(DataError, match="cam3/000012.jpg"):  # a broken file is named
        decode_batch([datas[1][:50]], CPU, ["cam3/000012.jpg"])
