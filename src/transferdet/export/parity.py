"""Is the exported model the trained one? Output parity on validation images, and the mAP gate.

``parity.json``: the largest |PyTorch - ONNX Runtime| of the fp32 model's outputs, and the validation mAP
(and AP per class) of PyTorch and of every exported model in ONNX Runtime. A model ONNX Runtime is meant to
run (fp32, fp16, ``int8``) that loses more than ``export.max_map_drop`` points of mAP against PyTorch fails
the export with the AP change of every class; the files stay, for inspection. The portable QDQ model
(``int8_qdq``) is measured the same way but only warned about: its consumers (TensorRT) compute INT8
differently from ONNX Runtime's CPU kernels, and its figure here is ONNX Runtime's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferdet.config.tasks import Runtime
from transferdet.detector.spec import DetectorSpec
from transferdet.errors import TransferdetError
from transferdet.evaluation.evaluator import EvaluationResult
from transferdet.export.calibration import validation_sample
from transferdet.export.exporter import Exported
from transferdet.inference.backends import OnnxRuntimeBackend, TorchBackend
from transferdet.inference.evaluate import evaluate_predictor
from transferdet.inference.predictor import Predictor
from transferdet.utils.io import write_json_atomic

log = logging.getLogger(__name__)
PARITY_FILE = "parity.json"


class ParityError(TransferdetError):
    """An exported model disagrees with the PyTorch model beyond the allowed mAP drop."""


def output_parity(network: nn.Module, onnx_path: Path, images: np.ndarray) -> dict[str, float]:
    """Largest absolute differences between the trained PyTorch network (as it is: no inference folding) and
    ONNX Runtime's outputs on the same images."""
    batch = torch.from_numpy(images)
    with torch.no_grad():
        a = [t.numpy() for t in network.eval()(batch)]
    b = OnnxRuntimeBackend(onnx_path)(batch)
    return {"cov": float(np.abs(a[0] - b[0]).max()), "bbox": float(np.abs(a[1] - b[1]).max())}


UNGATED = ("int8_qdq",)


def map_drops(
    results: dict[str, EvaluationResult], classes: list[str], max_drop: float, ungated: tuple[str, ...] = UNGATED
) -> tuple[dict, list[str]]:
    """mAP and AP per class of each result ("torch" is the reference); the failures of the gate, if any (a
    model of ``ungated`` past the gate is a warning)."""
    report = {
        "mAP": {k: r.mean_ap() for k, r in results.items()},
        "AP": {k: {c: r.ap(c) for c in classes} for k, r in results.items()},
    }
    failures = []
    for name in results:
        if name == "torch":
            continue
        drop = 100 * (report["mAP"]["torch"] - report["mAP"][name])
        if drop > max_drop:
            deltas = ", ".join(f"{c} {100 * (report['AP'][name][c] - report['AP']['torch'][c]):+.2f}" for c in classes)
            message = (
                f"{name} loses {drop:.2f} mAP points (> export.max_map_drop={max_drop:g}); "
                f"AP change per class, {name} - PyTorch: {deltas}"
            )
            if name in ungated:
                log.warning("%s (in ONNX Runtime; check it on its target runtime)", message)
            else:
                failures.append(message)
    return report, failures


def check_parity(
    spec: DetectorSpec,
    network: nn.Module,
    exported: Exported,
    converted_dir: Path,
    out: Path,
    parity_images: int,
    max_map_drop: float,
) -> dict[str, float]:
    """Compare the exports with the PyTorch model; write ``parity.json``; raise ParityError past the gate."""
    diff = output_parity(
        network, exported.models["fp32"], validation_sample(converted_dir, spec.preprocessing, parity_images)
    )
    predictors = {"torch": Predictor(spec, TorchBackend(network))}
    predictors.update({p: Predictor.load(path, Runtime.onnxruntime) for p, path in exported.models.items()})
    results = {name: evaluate_predictor(p, converted_dir).result for name, p in predictors.items()}
    report, failures = map_drops(results, list(spec.classes), max_map_drop)
    report.update(
        max_abs_diff=diff,
        engine=exported.engine_note or "built",
        files={k: v.name for k, v in exported.models.items()},
        gated=[k for k in exported.models if k not in UNGATED],
    )
    write_json_atomic(out / PARITY_FILE, report)
    log.info(
        "parity: max |torch - onnx| cov %.2e bbox %.2e; mAP %s",
        diff["cov"],
        diff["bbox"],
        ", ".join(f"{k} {v:.4f}" for k, v in report["mAP"].items()),
    )
    metrics = {"parity/max_abs_diff_cov": diff["cov"], "parity/max_abs_diff_bbox": diff["bbox"]}
    metrics.update({f"parity/mAP_{k}": v for k, v in report["mAP"].items()})
    metrics.update(
        {
            f"parity/mAP_drop_points_{k}": 100 * (report["mAP"]["torch"] - v)
            for k, v in report["mAP"].items()
            if k != "torch"
        }
    )
    metrics.update({f"export/size_mb_{k}": p.stat().st_size / 1e6 for k, p in exported.models.items()})
    if failures:
        raise ParityError("; ".join(failures) + f" (details in {out / PARITY_FILE})")
    return metrics
