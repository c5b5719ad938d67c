"""A Triton Inference Server model repository for an exported model (``export.triton=true``).

``triton/<name>/config.pbtxt`` and ``triton/<name>/1/model.onnx`` (ONNX Runtime backend), or
``1/model.plan`` with the TensorRT backend where export built an engine (the ONNX model stays next to it).
Input and output names and dims are read from the ONNX model itself; the batch dimension is Triton's
(``max_batch_size``), with dynamic batching on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from transferdet.utils.io import atomic_path, write_text_atomic

ONNX_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}


def tensors(model_path: Path) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """(name, Triton data type, dims without the batch) of the model's inputs and outputs."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}

    def describe(values) -> list[tuple[str, str, list[int]]]:
        out = []
        for v in values:
            if v.name in initializers:
                continue
            t = v.type.tensor_type
            out.append((v.name, ONNX_TYPES[t.elem_type], [d.dim_value for d in t.shape.dim[1:]]))
        return out

    return describe(graph.input), describe(graph.output)


def _block(kind: str, items: list[tuple[str, str, list[int]]]) -> str:
    entries = ",\n".join(
        f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'
        for name, dtype, dims in items
    )
    return f"{kind} [\n{entries}\n]\n"


def model_config(name: str, model_path: Path, max_batch_size: int, tensorrt: bool) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ModelConfig)."""
    inputs, outputs = tensors(model_path)
    platform = "tensorrt_plan" if tensorrt else "onnxruntime_onnx"
    filename = "model.plan" if tensorrt else "model.onnx"
    return (
        f'name: "{name}"\nplatform: "{platform}"\ndefault_model_filename: "{filename}"\n'
        f"max_batch_size: {max_batch_size}\n"
        + _block("input", inputs)
        + _block("output", outputs)
        + "dynamic_batching { }\n"
    )


def write_triton(
    folder: Path, model_path: Path, *, name: str = "detectnet_v2", max_batch_size: int, engine: Path | None = None
) -> Path:
    """Write the repository under ``folder/triton`` (replacing an earlier one of that name); returns its
    ``config.pbtxt``."""
    model_dir = folder / "triton" / name
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    copies = [(model_path, version / "model.onnx")] + ([(engine, version / "model.plan")] if engine else [])
    for src, dst in copies:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    config = model_dir / "config.pbtxt"
    write_text_atomic(config, model_config(name, model_path, max_batch_size, tensorrt=engine is not None))
    return config
