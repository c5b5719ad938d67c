"""A trained detector ready for images: checkpoint -> boxes in the pixels of the original images.

The preprocessing is the evaluation one (pad right/bottom and crop top-left, or resize when the
checkpoint was trained with ``augmentation.preprocessing.resize``), so detections of ``infer`` are
the ones ``evaluate`` scores.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from omegaconf import OmegaConf

from transferdet.data.augment import Augmenter
from transferdet.errors import ConfigError, DataError
from transferdet.models.checkpoint import load_tensor_file
from transferdet.models.detectnet import fold_batch_norm
from transferdet.structures import Detections
from transferdet.training.module import GROUPS, DetectNetModule

log = logging.getLogger(__name__)
T = TypeVar("T")


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def threads_per_worker(workers: int) -> int:
    """Runtime threads for each of ``workers`` concurrent batches: the machine's cores shared out."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def apply_overrides(config: dict, overrides: Sequence[str], groups: Sequence[str]) -> dict:
    """The checkpoint's config with the user's command-line overrides of ``groups`` applied on top."""
    merged = OmegaConf.create(config)
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if "." in key and key.split(".", 1)[0] in groups and value:  # not group selections like model=resnet34
            OmegaConf.update(merged, key, _parse(value), merge=True)
    return OmegaConf.to_container(merged, resolve=True)


def _parse(value: str):
    """A command-line value as YAML would read it (numbers, booleans, strings)."""
    return OmegaConf.create(f"v: {value}").v


RUNTIMES = ("torch", "onnxruntime", "tensorrt")
# the torch runtime's precisions; fp16 on a CUDA GPU only (an ONNX model's precision is the model's own)
PRECISIONS = ("fp32", "fp16")
ONNX_CONFIG_KEY, ONNX_CLASSES_KEY = "transferdet_config", "transferdet_classes"


def load_module(path: str | Path, overrides: Sequence[str] = ()) -> DetectNetModule:
    """Rebuild the LightningModule of a checkpoint (no training code config needed), in eval mode."""
    if Path(path).suffix.lower() == ".onnx":
        raise ConfigError("runtime", "torch", f"onnxruntime for an ONNX model ({path}); torch runs .ckpt checkpoints")
    obj = load_tensor_file(path, "checkpoint")
    hp = obj.get("hyper_parameters")
    if "state_dict" not in obj or not isinstance(hp, dict) or "config" not in hp or "classes" not in hp:
        raise DataError(
            path,
            "not a transferdet checkpoint (no state_dict with hyper_parameters config/classes); "
            "a plain backbone state dict goes to model.pretrained_model_file",
        )
    config = apply_overrides(hp["config"], overrides, GROUPS)
    try:
        module = DetectNetModule(config, hp["classes"], hp.get("channel_plan"))
    except KeyError as err:
        raise DataError(
            path, f"the checkpoint's channel plan does not fit a ResNet-{config['model']['num_layers']}: {err}"
        ) from None
    try:
        missing, unexpected = module.load_state_dict(obj["state_dict"], strict=False)
    except RuntimeError as err:  # tensor shapes differ from the architecture
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err)[:200])
        raise DataError(
            path,
            f"tensor shapes do not match the architecture (a pruned checkpoint without its channel plan?): {first}",
        ) from None
    if missing or unexpected:
        raise DataError(
            path, f"checkpoint does not fit its own architecture: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return module.eval()


def load_onnx(path: str | Path, overrides: Sequence[str] = (), threads: int | None = None):
    """An exported model: ONNX Runtime session, and the module rebuilt from the model's metadata (for its
    classes, preprocessing and post-processing; its weights are not used)."""
    import json

    import onnx
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file() or path.suffix.lower() != ".onnx":
        raise ConfigError(
            "checkpoint",
            str(path),
            "an existing .onnx file written by `transferdet export` with "
            "runtime=onnxruntime (runtime=torch runs .ckpt checkpoints)",
        )
    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as err:  # onnx raises DecodeError and friends for a broken file
        raise DataError(path, f"not a readable ONNX model ({err.__class__.__name__})") from None
    if ONNX_CONFIG_KEY not in meta or ONNX_CLASSES_KEY not in meta:
        raise DataError(
            path, "ONNX model without transferdet metadata (classes and settings): export it with `transferdet export`"
        )
    config = apply_overrides(json.loads(meta[ONNX_CONFIG_KEY]), overrides, GROUPS)
    module = DetectNetModule(config, json.loads(meta[ONNX_CLASSES_KEY])).eval()
    options = ort.SessionOptions()
    # no busy-waiting of ONNX Runtime's threads after a run: on a small machine they would take the cores
    # from the decoding, preprocessing and clustering around the network (measured: 32 -> 13 ms per image)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return module, session


class CudaGraphs:
    """A model on a CUDA GPU as CUDA graphs, one per input shape: captured on the first batch of a shape, then
    replayed, so a batch costs one launch instead of one per layer (at batch 1 the launches are most of the
    time). Inputs go into the graph's own input buffer (in the model's dtype and channels_last layout), the
    outputs come back as float32 numpy arrays. Batches from several threads take turns (one lock): a graph's
    buffers are shared."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.dtype = next(model.parameters()).dtype
        self.graphs: dict[tuple[int, ...], tuple[torch.Tensor, torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]]] = {}
        self.lock = threading.Lock()

    def _capture(self, shape: tuple[int, ...]):
        device = next(self.model.parameters()).device
        x = torch.zeros(shape, dtype=self.dtype, device=device).contiguous(memory_format=torch.channels_last)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        # cuDNN's settings for these convolutions only (a graph keeps the algorithms of its capture): the
        # fastest algorithms, and fp32 that is fp32 (no TF32), so the exported models' parity is checked
        # against the real thing; training in the same process keeps its own settings
        with torch.backends.cudnn.flags(
            enabled=True, benchmark=True, deterministic=False, allow_tf32=self.dtype != torch.float32
        ):
            with torch.cuda.stream(side):  # warm-up outside the capture (cuDNN picks its algorithms here)
                for _ in range(3):
                    self.model(x)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # each graph its own memory pool (shapes are replayed in any order); other threads may run CPU work
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = self.model(x)
        return x, graph, out

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            key = tuple(batch.shape)
            if key not in self.graphs:
                self.graphs[key] = self._capture(key)
            x, graph, (cov, bbox) = self.graphs[key]
            x.copy_(batch)  # to the GPU, the model's dtype and layout
            graph.replay()
            return cov.float().cpu().numpy(), bbox.float().cpu().numpy()


class Predictor:
    def __init__(
        self, module: DetectNetModule, device: str | torch.device = "cpu", session=None, precision: str = "fp32"
    ) -> None:
        self.module = module.to(device).eval()
        self.device = torch.device(device)
        self.session = session  # ONNX Runtime session; None = the PyTorch model
        self.precision = precision
        self.graphs: CudaGraphs | None = None
        self.network: torch.nn.Module | None = None  # the PyTorch model on a CPU
        if self.device.type == "cuda" and session is None:
            # on a GPU: channels_last (what cuDNN's fast convolutions read), fp16 if asked, CUDA graphs
            dtype = torch.float16 if precision == "fp16" else torch.float32
            self.graphs = CudaGraphs(self.module.model.to(dtype=dtype, memory_format=torch.channels_last))
        elif precision != "fp32":
            raise ConfigError(
                "precision",
                precision,
                "fp32 here: fp16 runs the torch runtime on a CUDA GPU (for "
                "ONNX Runtime, export an fp16 model: export.data_type=fp16)",
            )
        elif session is None:
            # on a CPU: BatchNorm folded into the convolutions and channels_last (oneDNN's own layout), measured
            # 1.5x faster for a pruned ResNet-18 at batch 1 (thin layers), 1.1x for an unpruned one
            self.network = fold_batch_norm(self.module.model).to(memory_format=torch.channels_last)
        self.classes = module.classes
        self.width, self.height = module.width, module.height
        self.resize = module.aug.preprocessing.resize
        self.augmenter = Augmenter(module.aug, train=False)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        return self.augmenter.preprocess(image)

    def to_image_coordinates(self, det: Detections, width: int, height: int) -> Detections:
        boxes = det.boxes.copy()
        if self.resize:
            boxes[:, 0::2] *= width / self.width
            boxes[:, 1::2] *= height / self.height
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        return Detections(boxes, det.class_ids, det.scores)

    @classmethod
    def for_module(cls, module: DetectNetModule, precision: str = "fp32") -> Predictor:
        """The torch runtime for an already loaded module: on the GPU when there is one, else the CPU."""
        return cls(module, "cuda" if torch.cuda.is_available() else "cpu", precision=precision)

    @classmethod
    def load(
        cls,
        path: str | Path,
        runtime: str = "torch",
        overrides: Sequence[str] = (),
        threads: int | None = None,
        precision: str = "fp32",
    ) -> Predictor:
        """A predictor for a checkpoint (``torch``) or an exported ONNX model (``onnxruntime``).

        ``threads``: ONNX Runtime's threads per run (default: one per core); PyTorch's are process-wide
        (``torch.set_num_threads``). ``precision``: the torch runtime's, ``fp32`` or (on a CUDA GPU) ``fp16``.
        """
        if precision not in PRECISIONS:
            raise ConfigError("precision", precision, " | ".join(PRECISIONS))
        if runtime != "torch" and precision != "fp32":
            raise ConfigError(
                "precision",
                precision,
                f"fp32 with runtime={runtime}: an exported model runs in the "
                f"precision it was exported in (export.data_type)",
            )
        if runtime == "torch":
            return cls.for_module(load_module(path, overrides), precision)
        if runtime == "onnxruntime":
            module, session = load_onnx(path, overrides, threads)
            return cls(module, "cpu", session)
        if runtime == "tensorrt":
            raise ConfigError(
                "runtime",
                runtime,
                "torch or onnxruntime on this machine: the tensorrt runtime needs "
                "an NVIDIA GPU and `pip install transferdet[tensorrt]`",
            )
        raise ConfigError("runtime", runtime, ", ".join(RUNTIMES))

    @torch.no_grad()
    def outputs(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Raw network outputs (cov, bbox) of a preprocessed batch, from whichever runtime."""
        if self.session is not None:
            cov, bbox = self.session.run(None, {"input_1": np.asarray(batch.numpy(), np.float32)})
            return cov, bbox
        if self.graphs is not None:
            return self.graphs(batch)
        cov, bbox = self.network(batch.contiguous(memory_format=torch.channels_last))
        return cov.contiguous().numpy(), bbox.contiguous().numpy()

    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections for ``[h, w, 3]`` uint8 RGB images, boxes in each image's own pixels."""
        if not images:
            return []
        batch = torch.stack([self.preprocess(im) for im in images])
        found = self.module.postprocessor(*self.outputs(batch))
        return [self.to_image_coordinates(d, im.shape[1], im.shape[0]) for d, im in zip(found, images)]

    def stream(
        self, items: Iterable[T], load: Callable[[T], np.ndarray], batch_size: int = 1, workers: int = 2
    ) -> Iterator[tuple[list[T], list[np.ndarray], list[Detections]]]:
        """``(items, images, detections)`` batch by batch, in input order, for a stream of inputs.

        ``workers`` threads each load (decode) and run one batch while the others run theirs: image
        decoding, ONNX Runtime and PyTorch release the GIL, so the decoding and clustering of one batch
        overlap the network of another. At most ``2 x workers`` batches are in flight, so memory does not
        grow with the input. ``workers=1`` runs batch after batch in the calling thread.
        """

        def run(chunk: list[T]) -> tuple[list[T], list[np.ndarray], list[Detections]]:
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
