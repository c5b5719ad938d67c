"""TensorRT (10.x Python API) where TensorRT and an NVIDIA GPU exist: engine build and a predictor backend.

An engine is built from an exported ONNX model as that model is: fp32, fp16 (``model_fp16.onnx``), or INT8 by
explicit quantization from the QDQ model (``model_int8_qdq.onnx``, the scales come from the model), or INT8
from the fp32 model and ``calibration.cache`` (implicit quantization, TLT's and DeepStream's way; TensorRT 11
dropped it). ONNX Runtime's own operator-format model (``model_int8_onnxruntime.onnx``) is not for TensorRT.

Not run on the machines this project is developed on (no TensorRT there): see docs/deployment.md for what was
checked and what was not.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import onnx
import torch

from transferdet.errors import ConfigError, DataError
from transferdet.utils.io import atomic_path

log = logging.getLogger(__name__)
INPUT_NAME = "input_1"
INSTALL_HINT = (
    "install TensorRT 10 on a machine with an NVIDIA GPU (pip install 'transferdet[tensorrt]'), or build the "
    "engine there with trtexec (docs/deployment.md)"
)


def tensorrt_unavailable() -> str | None:
    """None when TensorRT can build and run engines here, else why not."""
    try:
        import tensorrt as trt
    except ImportError:
        return f"TensorRT is not installed: {INSTALL_HINT}"
    if not torch.cuda.is_available():
        return f"no CUDA GPU on this machine: {INSTALL_HINT}"
    if int(trt.__version__.split(".")[0]) < 10:
        return f"TensorRT {trt.__version__} is older than 10: {INSTALL_HINT}"
    return None


def require_tensorrt(key: str = "runtime") -> None:
    """One clear ConfigError when TensorRT or a GPU is missing."""
    reason = tensorrt_unavailable()
    if reason:
        raise ConfigError(key, "tensorrt", f"torch or onnxruntime here: {reason}")


def onnx_data_type(path: str | Path) -> str:
    """``fp32``, ``fp16`` or ``int8`` (a QDQ model) for an exported ONNX model; a DataError for a model TensorRT
    cannot take (ONNX Runtime's own operators)."""
    model = onnx.load(str(path), load_external_data=False)
    domains = {n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    if domains:
        raise DataError(
            path,
            f"uses ONNX Runtime's own operators ({', '.join(sorted(domains))}), which TensorRT does not have: "
            "build INT8 engines from model_int8_qdq.onnx, or from model_fp32.onnx with calibration.cache",
        )
    if any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def _cache_calibrator(trt, cache: bytes):
    """An INT8 calibrator that only hands TensorRT an existing calibration cache (no batches: none are needed)."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):  # noqa: ARG002 - TensorRT's signature
            return None

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data) -> None:  # noqa: ARG002 - the cache is ours already
            return None

    return CacheCalibrator()


def build_engine(
    onnx_path: str | Path,
    *,
    height: int,
    width: int,
    max_batch_size: int,
    workspace: int = 2 << 30,
    calibration_cache: str | Path | None = None,
    out: str | Path | None = None,
) -> bytes:
    """A serialized engine for ``onnx_path`` (data type as the model is; INT8 from an fp32 model with
    ``calibration_cache``), dynamic batch 1..``max_batch_size``; written atomically to ``out`` if given."""
    require_tensorrt("export.engine" if out else "runtime")
    import tensorrt as trt

    data_type = onnx_data_type(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DataError(onnx_path, f"TensorRT cannot parse this model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    profile = builder.create_optimization_profile()
    shape = (3, height, width)
    profile.set_shape(INPUT_NAME, (1, *shape), (max_batch_size, *shape), (max_batch_size, *shape))
    config.add_optimization_profile(profile)
    if data_type in ("fp16", "int8") or calibration_cache:
        config.set_flag(trt.BuilderFlag.FP16)  # layers without INT8 scales run in fp16, not fp32
    if data_type == "int8" or calibration_cache:
        config.set_flag(trt.BuilderFlag.INT8)
    if calibration_cache and data_type == "fp32":
        config.int8_calibrator = _cache_calibrator(trt, Path(calibration_cache).read_bytes())
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DataError(onnx_path, "TensorRT failed to build an engine from this model (its log is above)")
    data = bytes(serialized)
    if out is not None:
        with atomic_path(Path(out)) as tmp:
            tmp.write_bytes(data)
    return data


class TensorRTBackend:
    """A TensorRT engine on the GPU. Inputs and outputs live in PyTorch CUDA tensors whose memory TensorRT
    reads and writes directly (no host copies but the final outputs); batches larger than the engine's
    profile run in chunks."""

    device = torch.device("cuda")

    def __init__(self, engine: bytes, max_batch_size: int) -> None:
        import tensorrt as trt

        self.trt, self.max_batch_size = trt, max_batch_size
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine)
        if self.engine is None:
            raise DataError("engine", "TensorRT could not load the engine it built")
        self.context = self.engine.create_execution_context()
        self.lock = threading.Lock()  # one execution context: streaming threads take turns at its bindings
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.outputs = sorted(outputs, key=lambda n: "cov" not in n)  # (coverage, bbox), as the other backends
        self.dtypes = {
            n: torch.float16 if self.engine.get_tensor_dtype(n) == trt.float16 else torch.float32 for n in self.outputs
        }

    @classmethod
    def from_onnx(cls, path: str | Path, height: int, width: int, max_batch_size: int = 16) -> TensorRTBackend:
        """Build the engine of an exported ONNX model (a minute or so on a GPU) and load it."""
        log.info("building a TensorRT engine from %s (batch up to %d)", path, max_batch_size)
        engine = build_engine(path, height=height, width=width, max_batch_size=max_batch_size)
        return cls(engine, max_batch_size)

    @torch.no_grad()
    def _run(self, batch: torch.Tensor) -> list[torch.Tensor]:
        x = batch.to(self.device, torch.float32).contiguous()
        with self.lock:
            return self._execute(x)

    def _execute(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
        self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
        outs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT failed to run the engine")
        return outs

    def tensors(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw outputs (cov, bbox) as float32 tensors on the GPU."""
        chunks = [self._run(part) for part in torch.split(batch, self.max_batch_size)]
        cov, bbox = (torch.cat(parts).float() for parts in zip(*chunks))
        return cov, bbox

    def __call__(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        cov, bbox = self.tensors(batch)
        return cov.cpu().numpy(), bbox.cpu().numpy()  # .cpu() waits for the stream
