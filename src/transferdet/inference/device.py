"""Images onto the network's device. On a CUDA GPU: JPEG files decoded there in one nvJPEG call a batch, images
decoded on the host copied through page-locked buffers without waiting, the preprocessing (crop and pad, or
resize, and the scaling to [0, 1]) as tensor operations on the GPU, and every streaming thread on its own CUDA
stream, so that one batch's decoding and copies overlap another's network. The preprocessing is the one of
:meth:`~transferdet.data.augment.Augmenter.preprocess`: the same floats for crop and pad; a resize rounds its
uint8 result from floats on the GPU (at most 1/255 off the CPU's).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as F

from transferdet.config.schema import PreprocessingConfig
from transferdet.data.images import decode_rgb

log = logging.getLogger(__name__)
Image = np.ndarray | torch.Tensor  # [h, w, 3] uint8 RGB on the host, or [3, h, w] uint8 on a device
JPEG_START = b"\xff\xd8\xff"
_local = threading.local()

try:  # PyTorch's image decoders (torchvision's are deprecated since 0.29); torchvision's where it is missing
    from torchcodec.decoders import decode_jpeg as _torchcodec_jpeg
except (ImportError, OSError, RuntimeError):
    _torchcodec_jpeg = None
    # catch_warnings is not thread-safe: the one deprecation notice of torchvision's decoders, filtered once
    warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning)


def _nvjpeg(datas: list[bytes], device: torch.device) -> list[torch.Tensor]:
    if _torchcodec_jpeg is not None:
        return list(_torchcodec_jpeg(list(datas), mode="RGB", device=device))
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))


def decode_batch(datas: Sequence[bytes], device: torch.device, sources: Sequence[str] | None = None) -> list[Image]:
    """Image files' bytes as images: on a CUDA ``device`` the JPEGs decoded there by nvJPEG (one call for the
    batch), everything else on the host as every stage decodes it (:func:`decode_rgb`, which names a broken
    file: ``sources``); a batch nvJPEG refuses (a CMYK JPEG, a broken one) is decoded on the host."""
    names = list(sources) if sources is not None else [f"<encoded image {i}>" for i in range(len(datas))]
    out: list[Image | None] = [None] * len(datas)
    jpegs = [i for i, d in enumerate(datas) if d[:3] == JPEG_START] if device.type == "cuda" else []
    if jpegs:
        try:
            for i, im in zip(jpegs, _nvjpeg([datas[i] for i in jpegs], device)):
                out[i] = im
        except RuntimeError as err:
            log.debug("nvJPEG refused a batch (%s): decoding it on the host", err)
    return [im if im is not None else decode_rgb(d, name) for im, d, name in zip(out, datas, names)]


def image_size(image: Image) -> tuple[int, int]:
    """``(width, height)`` of a host ``[h, w, 3]`` or device ``[3, h, w]`` image."""
    return (image.shape[1], image.shape[0]) if isinstance(image, np.ndarray) else (image.shape[2], image.shape[1])


def upload(image: Image, device: torch.device) -> torch.Tensor:
    """An image as ``[3, h, w]`` uint8 on ``device``; a host image goes to a GPU through a page-locked buffer
    (PyTorch's caching host allocator reuses them) and an asynchronous copy on the current stream."""
    if isinstance(image, torch.Tensor):
        return image.to(device, non_blocking=True)
    if device.type != "cuda":
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    staging = torch.empty(image.shape, dtype=torch.uint8, pin_memory=True)
    staging.numpy()[...] = image
    return staging.to(device, non_blocking=True).permute(2, 0, 1)


def preprocess_batch(
    images: Sequence[Image], pre: PreprocessingConfig, width: int, height: int, device: torch.device
) -> torch.Tensor:
    """``images`` as the network takes them, ``[B, C, height, width]`` float32 on ``device``, computed there."""
    out = torch.zeros((len(images), 3, height, width), dtype=torch.float32, device=device)
    for i, image in enumerate(images):
        im = upload(image, device)
        if pre.resize:
            out[i] = F.resize(im, [height, width], antialias=True)
        else:  # pad right/bottom with 0, crop top-left
            h, w = min(height, im.shape[1]), min(width, im.shape[2])
            out[i, :, :h, :w] = im[:, :h, :w]
    out.mul_(1 / 255)
    if pre.output_image_channel == 1:
        out = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2])[:, None]
    return out


@contextlib.contextmanager
def thread_stream(device: torch.device) -> Iterator[None]:
    """On a CUDA ``device``, the calling thread's own CUDA stream (made on its first use) as the current one;
    elsewhere nothing."""
    if device.type != "cuda":
        yield
        return
    streams = _local.__dict__.setdefault("streams", {})  # per thread: device -> its stream
    if device not in streams:
        streams[device] = torch.cuda.Stream(device)
    with torch.cuda.stream(streams[device]):
        yield
