"""A trained detector ready for images: a :class:`~transferdet.detector.DetectorSpec` and a backend.

The preprocessing is the evaluation one (pad right/bottom and crop top-left, or resize when the model
was trained with ``augmentation.preprocessing.resize``), so detections of ``infer`` are the ones
``evaluate`` scores. Boxes come back in the pixels of each original image.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from transferdet.config.overrides import DetectorOverrides
from transferdet.config.schema import AugmentationConfig
from transferdet.config.tasks import Precision, Runtime
from transferdet.data.augment import Augmenter
from transferdet.detector import checkpoint
from transferdet.detector.spec import DetectorSpec
from transferdet.errors import ConfigError
from transferdet.inference.backends import Backend, OnnxRuntimeBackend, TorchBackend
from transferdet.inference.device import Image, decode_batch, image_size, preprocess_batch, thread_stream
from transferdet.inference.tensorrt import TensorRTBackend, require_tensorrt
from transferdet.structures import Detections

log = logging.getLogger(__name__)
T = TypeVar("T")


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Predictor:
    """``predictor(images) -> detections``: preprocessing, the backend's network, post-processing."""

    def __init__(self, spec: DetectorSpec, backend: Backend) -> None:
        self.spec, self.backend = spec, backend
        self.classes = list(spec.classes)
        self.width, self.height = spec.width, spec.height
        self.postprocessor = spec.postprocessor()
        self.network_outputs = spec.network_outputs(backend)
        # on a GPU the maps stay there: thresholding, the bound and DBSCAN run on it, the candidates cross
        self.maps = self.network_outputs
        if self.device.type == "cuda" and hasattr(backend, "tensors"):
            self.maps = spec.network_outputs(backend.tensors)
        self.augmenter = Augmenter(AugmentationConfig(preprocessing=spec.preprocessing), train=False)

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @classmethod
    def load(
        cls,
        path: str | Path,
        runtime: Runtime = Runtime.torch,
        overrides: DetectorOverrides | None = None,
        threads: int | None = None,
        precision: Precision = Precision.fp32,
    ) -> Predictor:
        """A predictor for a checkpoint (``torch``) or an exported ONNX model (``onnxruntime``, or ``tensorrt``
        where TensorRT and a GPU exist: the engine is built from the model at load).

        ``threads``: ONNX Runtime's threads per run (default: one per core); PyTorch's are process-wide
        (``torch.set_num_threads``). ``precision``: the torch runtime's, fp32 or (on a CUDA GPU) fp16.
        """
        if runtime is not Runtime.torch and precision is not Precision.fp32:
            raise ConfigError(
                "precision",
                precision.value,
                f"fp32 with runtime={runtime.value}: an exported model "
                "runs in the precision it was exported in "
                "(export.data_type)",
            )
        if runtime is Runtime.torch:
            loaded = checkpoint.load(path, overrides)
            return cls(loaded.spec, TorchBackend(loaded.network, precision))
        if runtime is Runtime.tensorrt:
            require_tensorrt()
        spec = checkpoint.read_onnx_spec(path, overrides, runtime.value)
        if runtime is Runtime.tensorrt:
            return cls(spec, TensorRTBackend.from_onnx(path, spec.height, spec.width))
        return cls(spec, OnnxRuntimeBackend(path, threads))

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """One ``[h, w, 3]`` uint8 RGB image as the network takes it: ``[3, H, W]`` float in [0, 1]."""
        return self.augmenter.preprocess(image)

    def outputs(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Raw network outputs (cov, bbox) of a preprocessed batch, from whichever runtime (averaged with the
        mirrored batch's with ``postprocessing.test_time_flip``)."""
        return self.network_outputs(batch)

    def to_image_coordinates(self, det: Detections, width: int, height: int) -> Detections:
        """Boxes on the network's canvas as pixels of the original ``width`` x ``height`` image."""
        boxes = det.boxes.copy()
        if self.spec.preprocessing.resize:
            boxes[:, 0::2] *= width / self.width
            boxes[:, 1::2] *= height / self.height
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        return Detections(boxes, det.class_ids, det.scores)

    def preprocess_batch(self, images: Sequence[Image]) -> torch.Tensor:
        """Images (host ``[h, w, 3]`` uint8 RGB, or ``[3, h, w]`` uint8 tensors) as one batch on the backend's
        device: on a GPU preprocessed there (:mod:`transferdet.inference.device`), else on the host."""
        if self.device.type == "cuda":
            return preprocess_batch(images, self.spec.preprocessing, self.width, self.height, self.device)
        batch = np.empty(
            (len(images), self.spec.preprocessing.output_image_channel, self.height, self.width), np.float32
        )
        for im, slot in zip(images, batch):
            self.augmenter.preprocess(im if isinstance(im, np.ndarray) else im.cpu().permute(1, 2, 0).numpy(), slot)
        return torch.from_numpy(batch)

    def decode(self, datas: Sequence[bytes], sources: Sequence[str] | None = None) -> list[Image]:
        """Image files' bytes as images, JPEGs on the GPU where the network runs on one (nvJPEG)."""
        return decode_batch(datas, self.device, sources)

    def __call__(self, images: Sequence[Image | bytes]) -> list[Detections]:
        """Detections for images (``[h, w, 3]`` uint8 RGB arrays, ``[3, h, w]`` uint8 tensors, or the bytes of
        image files), boxes in each image's own pixels."""
        if not images:
            return []
        if any(isinstance(im, bytes) for im in images):
            encoded = [i for i, im in enumerate(images) if isinstance(im, bytes)]
            decoded = dict(zip(encoded, self.decode([images[i] for i in encoded])))
            images = [decoded.get(i, im) for i, im in enumerate(images)]
        found = self.postprocessor(*self.maps(self.preprocess_batch(images)))
        return [self.to_image_coordinates(d, *image_size(im)) for d, im in zip(found, images)]

    def stream(
        self, items: Iterable[T], load: Callable[[T], Image | bytes], batch_size: int = 1, workers: int = 2
    ) -> Iterator[tuple[list[T], list[Image | bytes], list[Detections]]]:
        """``(items, images, detections)`` batch by batch, in input order, for a stream of inputs; ``load``
        returns an image or an image file's bytes (decoded with the batch: JPEGs by nvJPEG on a GPU).

        ``workers`` threads each load (decode) and run one batch while the others run theirs: image
        decoding, ONNX Runtime and PyTorch release the GIL, so the decoding and clustering of one batch
        overlap the network of another. At most ``2 x workers`` batches are in flight, so memory does not
        grow with the input. ``workers=1`` runs batch after batch in the calling thread.
        """

        def run(chunk: list[T]) -> tuple[list[T], list[Image | bytes], list[Detections]]:
            with thread_stream(self.device):  # on a GPU each worker its own CUDA stream
                images = [load(item) for item in chunk]
                return chunk, images, self(images)

        if workers <= 1:
            yield from map(run, batches(items, batch_size))
            return
        pool = ThreadPoolExecutor(workers, thread_name_prefix="transferdet-infer")
        pending: deque = deque()
        try:
            for chunk in batches(items, batch_size):
                pending.append(pool.submit(run, chunk))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # an error or a consumer that stops early: drop the batches not started yet
            pool.shutdown(wait=True, cancel_futures=True)
