"""INT8 weight bits on this CPU: ONNX Runtime's fused int8 kernels against the model's own arithmetic.

    python -m transferdet.bench.int8_weights MODEL_FP32.onnx CONVERTED_DIR [--calibration 80] [--out FILE.json]

Quantizes an fp32 export with 8- and with 7-bit weights three ways from one calibration (the training images
export would draw): the ONNX Runtime operator-format model (uint8 activations), the portable QDQ model
(symmetric int8 activations) and QDQ with uint8 activations; and scores each on the validation split, in ONNX
Runtime ("fused": this CPU's int8 kernels) and, for QDQ, operator by operator in float ("exact": the model's
own arithmetic, which TensorRT, OpenCV and CPUs with VNNI compute). Fused well below exact is saturation
(docs/measurements.md, INT8).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from transferdet.config.tasks import Runtime
from transferdet.export.calibration import calibration_images
from transferdet.export.quantize import quantize_int8
from transferdet.inference.backends import OnnxRuntimeBackend
from transferdet.inference.evaluate import evaluate_predictor
from transferdet.inference.predictor import Predictor

VARIANTS = (
    ("operator format, uint8", "uint8", "qoperator"),
    ("QDQ, int8", "int8", "qdq"),
    ("QDQ, uint8", "uint8", "qdq"),
)


def cpu_flags() -> list[str]:
    """The x86 vector extensions that decide how int8 dot products add up (empty where /proc/cpuinfo is not)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]


class ExactBackend(OnnxRuntimeBackend):
    """ONNX Runtime with no graph optimisation: a QDQ model runs as DequantizeLinear -> float operator ->
    QuantizeLinear, exactly what the model says."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an fp32 ONNX model written by `transferdet export`")
    parser.add_argument("converted", type=Path, help="its dataset's converted folder (<dataset.root>/converted)")
    parser.add_argument("--calibration", type=int, default=80, help="calibration images (export: 10 x 8)")
    parser.add_argument("--out", type=Path, default=Path("bench_int8_weights.json"))
    args = parser.parse_args(argv)

    spec = Predictor.load(args.model, Runtime.onnxruntime).spec

    def score(backend) -> float:
        return round(
            100 * evaluate_predictor(Predictor(spec, backend), args.converted, progress=False).result.mean_ap(), 2
        )

    images = calibration_images(args.converted, spec.preprocessing, args.calibration)
    report = {
        "cpu_flags": cpu_flags(),
        "model": str(args.model),
        "mAP": {"fp32": score(OnnxRuntimeBackend(args.model))},
    }
    print(f"CPU flags: {' '.join(report['cpu_flags']) or 'unknown'}; fp32 mAP {report['mAP']['fp32']}")
    print("| INT8 variant | 8-bit weights: fused / exact | 7-bit weights: fused / exact |\n|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, activations, fmt in VARIANTS:
            cells = []
            for bits in (8, 7):
                path = quantize_int8(
                    args.model,
                    Path(tmp) / f"{fmt}_{activations}_{bits}.onnx",
                    images,
                    "minmax",
                    8,
                    activations,
                    fmt,
                    bits,
                )
                fused = score(OnnxRuntimeBackend(path))
                exact = score(ExactBackend(path)) if fmt == "qdq" else None
                report["mAP"][f"{name}, {bits}-bit weights"] = {"fused": fused, "exact": exact}
                cells.append(f"{fused:.2f} / {'–' if exact is None else f'{exact:.2f}'}")
            print(f"| {name} | {cells[0]} | {cells[1]} |", flush=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
