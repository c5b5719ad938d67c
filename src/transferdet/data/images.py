"""Image files as ``[h, w, 3]`` uint8 RGB: one decoder for training, evaluation, calibration and inference, so
every stage sees the same pixels.

PIL reads the header (format, mode, size: the decompression-bomb check happens there); 8- and 16-bit PNGs and
JPEGs are then decoded by TorchCodec, PyTorch's image decoders (torchvision's are deprecated since 0.29): they
release the GIL for the whole decode, so the decoding threads of ``infer`` run in parallel, and PIL's decoder
measured 1.3x slower on KITTI frames (docs/measurements.md). Every other format and mode, and any file
TorchCodec cannot decode, goes through PIL, which also names what is wrong with a broken file; so does
everything where TorchCodec does not load (a torch it was not built for).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from transferdet.errors import DataError

log = logging.getLogger(__name__)
try:
    from torchcodec.decoders import decode_image
except (ImportError, OSError, RuntimeError) as err:  # its native library must match the installed torch
    log.debug("TorchCodec does not load (%s): images are decoded by PIL", err)
    decode_image = None

# 16-bit greyscale modes: PIL's convert("RGB") clips them (every value above 255 turns white)
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# what TorchCodec decodes to the same RGB pixels as PIL's convert("RGB") (alpha dropped, grey repeated,
# palettes expanded; a test compares them); CMYK/YCCK JPEGs, 16-bit grey and other formats stay with PIL
FAST_MODES = {"PNG": {"RGB", "RGBA", "L", "LA", "P", "1"}, "JPEG": {"RGB", "L"}}


def to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL image as ``[h, w, 3]`` uint8 RGB: palette, grey, RGBA and 16-bit images scaled correctly."""
    if im.mode in WIDE_GREY_MODES:
        grey = (np.asarray(im, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)  # 0..65535 -> 0..255
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.array(im.convert("RGB"))  # writable: torch tensors share its memory


def _torchcodec_rgb(data: bytes) -> np.ndarray | None:
    """``[h, w, 3]`` uint8 (a view of the decoded ``[3, h, w]`` tensor, writable), or None where it fails."""
    if decode_image is None:
        return None
    try:
        chw = decode_image(data, mode="RGB", output_dtype="auto")
    except (RuntimeError, ValueError):
        return None
    if chw.dtype == torch.uint16:  # a 16-bit PNG: the high byte, as PIL reads it
        chw = (chw.to(torch.int32) >> 8).to(torch.uint8)
    return chw.permute(1, 2, 0).numpy()


def decode_rgb(data: bytes, source: str | Path) -> np.ndarray:
    """The bytes of an image file (``source`` names it in errors) as ``[h, w, 3]`` uint8 RGB."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode in FAST_MODES.get(im.format or "", ()):
                rgb = _torchcodec_rgb(data)
                if rgb is not None and rgb.shape[:2] == (im.height, im.width):
                    return rgb
            return to_rgb(im)
    except Image.DecompressionBombError as err:
        raise DataError(source, f"refused: {err}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(source, f"cannot decode image ({err.__class__.__name__}: {err})") from None


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to ``[h, w, 3]`` uint8 RGB; a broken file is a DataError naming it."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(path, "image file is missing (moved or deleted since conversion?)") from None
    except OSError as err:
        raise DataError(path, f"cannot read image ({err.__class__.__name__}: {err})") from None
    return decode_rgb(data, path)
