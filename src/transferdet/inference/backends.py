"""Where a detector's network runs: one small class per runtime, each ``batch [B, 3, H, W] -> (cov, bbox)``.

* :class:`TorchBackend`: the PyTorch network; on a CPU with BatchNorm folded and channels_last, on a CUDA
  GPU as CUDA graphs (fp32 or fp16);
* :class:`OnnxRuntimeBackend`: an exported ONNX model in ONNX Runtime (CPU);
* a TensorRT engine is the next one (see the deployment docs).

A backend knows nothing of classes or boxes: :class:`~transferdet.inference.predictor.Predictor` pairs it
with a :class:`~transferdet.detector.DetectorSpec`.
"""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from transferdet.config.tasks import Precision
from transferdet.errors import ConfigError, DataError
from transferdet.models.detectnet import fold_batch_norm

ONNX_INPUT = "input_1"


class Backend(Protocol):
    """A network on some runtime: preprocessed images in, raw outputs as float32 numpy arrays out."""

    device: torch.device

    def __call__(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]: ...


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or ``taskset``'s limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def workers_or_default(workers: int | None) -> int:
    """Concurrent batches of a stream: ``workers``, or by default one per core (each decodes, preprocesses,
    runs and clusters its own batch, so every core has work whichever stage is the slow one)."""
    return workers or machine_cores()


def threads_per_worker(workers: int | None) -> int:
    """Runtime threads for each of ``workers`` concurrent batches: the machine's cores shared out."""
    return max(1, machine_cores() // workers_or_default(workers))


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
        self.done: torch.cuda.Event | None = None  # the last batch's copies of the outputs

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
    def tensors(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The outputs of ``batch`` (any device) as tensors on the GPU, copies of the graph's buffers, made on
        the calling thread's current stream. Threads on other streams take turns at the shared buffers: each
        waits on the GPU for the previous batch's copies before writing the graph's input."""
        with self.lock:
            key = tuple(batch.shape)
            if key not in self.graphs:
                self.graphs[key] = self._capture(key)
            x, graph, (cov, bbox) = self.graphs[key]
            stream = torch.cuda.current_stream(x.device)
            if self.done is not None:
                stream.wait_event(self.done)
            x.copy_(batch, non_blocking=True)  # to the GPU, the model's dtype and layout
            graph.replay()
            out = cov.clone(), bbox.clone()
            self.done = torch.cuda.Event()
            self.done.record(stream)
            return out

    def __call__(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        cov, bbox = self.tensors(batch)
        return cov.float().cpu().numpy(), bbox.float().cpu().numpy()


class TorchBackend:
    """A PyTorch network: on the GPU when there is one (CUDA graphs, channels_last, fp32 or fp16), else the CPU
    (BatchNorm folded into the convolutions, channels_last)."""

    def __init__(
        self, network: torch.nn.Module, precision: Precision = Precision.fp32, device: str | torch.device | None = None
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = precision
        self.graphs: CudaGraphs | None = None
        if self.device.type == "cuda":  # a copy: the caller's network stays as it is
            dtype = torch.float16 if precision is Precision.fp16 else torch.float32
            gpu = copy.deepcopy(network).eval().to(self.device, dtype=dtype, memory_format=torch.channels_last)
            self.graphs = CudaGraphs(gpu)
        elif precision is not Precision.fp32:
            raise ConfigError(
                "precision",
                precision.value,
                "fp32 here: fp16 runs the torch runtime on a CUDA GPU "
                "(for ONNX Runtime, export an fp16 model: "
                "export.data_type=fp16)",
            )
        else:
            # BatchNorm folded and channels_last (oneDNN's own layout): measured 1.5x faster for a pruned
            # ResNet-18 at batch 1 on a CPU (thin layers), 1.1x for an unpruned one
            self.network = fold_batch_norm(network.cpu()).to(memory_format=torch.channels_last)

    @torch.no_grad()
    def tensors(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw outputs as tensors where the network runs (on a GPU they stay there)."""
        if self.graphs is not None:
            return self.graphs.tensors(batch)
        return self.network(batch.contiguous(memory_format=torch.channels_last))

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if self.graphs is not None:
            return self.graphs(batch)
        cov, bbox = self.network(batch.contiguous(memory_format=torch.channels_last))
        return cov.contiguous().numpy(), bbox.contiguous().numpy()


class OnnxRuntimeBackend:
    """An exported ONNX model in ONNX Runtime on the CPU; ``threads`` per run (default: one per core)."""

    device = torch.device("cpu")

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # no busy-waiting of ONNX Runtime's threads after a run: on a small machine they would take the cores
        # from the decoding, preprocessing and clustering around the network (measured: 32 -> 13 ms per image)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ONNX Runtime raises its own Fail/InvalidGraph/... types
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise DataError(path, f"ONNX Runtime cannot load this model: {first[:300]}") from None

    def __call__(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        cov, bbox = self.session.run(None, {ONNX_INPUT: np.asarray(batch.numpy(), np.float32)})
        return cov, bbox
