"""``transferdet export checkpoint=PATH export.data_type=fp32|fp16|int8``.

Writes into the run directory:

* ``model_fp32.onnx`` always, and ``model_fp16.onnx`` or ``model_int8.onnx`` (ONNX Runtime static
  quantization: operator format with uint8 activations, QDQ with int8) for those data types; every model
  carries its classes and settings as metadata, so ``infer``/``evaluate`` run it with
  ``runtime=onnxruntime`` and nothing else;
* ``calibration.cache`` (TensorRT text format) for int8;
* ``nvinfer_config.txt`` and ``labels.txt`` for DeepStream, ``model.engine`` where TensorRT and a GPU exist;
* ``parity.json``: PyTorch vs ONNX Runtime outputs on validation images, and the mAP of each precision.
  An exported precision that loses more than ``export.max_map_drop`` points fails the task (its files
  stay, for inspection).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from omegaconf import DictConfig, OmegaConf

from transferdet.config import typed
from transferdet.errors import TransferdetError
from transferdet.export.deepstream import write_deepstream
from transferdet.export.onnx_export import export_onnx
from transferdet.export.quantize import activation_ranges, calibration_ranges, quantize_int8
from transferdet.export.tensorrt_cache import write_cache
from transferdet.export.tensorrt_engine import build_engine
from transferdet.inference.predictor import ONNX_CLASSES_KEY, ONNX_CONFIG_KEY, Predictor, load_module
from transferdet.tasks.calibrate import calibration_images, load_calibration_file, preprocessed
from transferdet.tasks.evaluate import evaluate_model, evaluate_predictor, user_overrides
from transferdet.utils.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)


class ParityError(TransferdetError):
    """An exported model disagrees with the PyTorch model beyond the allowed mAP drop."""


def add_metadata(path: Path, config: dict, classes: list[str]) -> None:
    model = onnx.load(str(path))
    for key, value in ((ONNX_CONFIG_KEY, json.dumps(config, sort_keys=True)), (ONNX_CLASSES_KEY, json.dumps(classes))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "transferdet"
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def to_fp16(fp32: Path, out: Path) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)  # float32 input and outputs
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    return out


def output_parity(model: torch.nn.Module, onnx_path: Path, images: np.ndarray) -> dict[str, float]:
    """Largest absolute differences between the trained PyTorch model (as it is: no inference folding) and
    ONNX Runtime's outputs on the same images."""
    batch = torch.from_numpy(images)
    with torch.no_grad():
        a = [t.numpy() for t in model.eval()(batch)]
    b = Predictor.load(str(onnx_path), "onnxruntime").outputs(batch)
    return {"cov": float(np.abs(a[0] - b[0]).max()), "bbox": float(np.abs(a[1] - b[1]).max())}


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    e, c = typed(cfg, "export"), typed(cfg, "calibration")
    checkpoint = cfg.get("checkpoint")
    if not checkpoint:
        from transferdet.errors import ConfigError

        raise ConfigError("checkpoint", checkpoint, "a transferdet checkpoint file (checkpoint=PATH)")
    module = load_module(checkpoint, user_overrides())
    classes, width, height = module.classes, module.width, module.height
    config = OmegaConf.to_container(OmegaConf.create(module.hparams["config"]), resolve=True)
    data_type = e.data_type.value
    images = None
    if data_type == "int8":  # read (and check) the calibration data before writing anything
        images = (
            load_calibration_file(c.cal_data_file, height, width)
            if c.cal_data_file
            else calibration_images(cfg, module.aug, c.batches * c.batch_size)
        )

    fp32 = export_onnx(module.model, run_dir / "model_fp32.onnx", height, width)
    add_metadata(fp32, config, classes)
    models = {"fp32": fp32}
    cache = None
    if data_type == "fp16":
        models["fp16"] = to_fp16(fp32, run_dir / "model_fp16.onnx")
    elif data_type == "int8":
        int8 = quantize_int8(
            fp32,
            run_dir / "model_int8.onnx",
            images,
            c.calibration_method.value,
            c.batch_size,
            e.int8_activations.value,
        )
        add_metadata(int8, config, classes)
        models["int8"] = int8
        # the cache holds ranges by the fp32 model's tensor names: a QDQ model has them as they are, the
        # operator-format ONNX Runtime model (uint8) has fused some away, so its ranges come from a QDQ pass
        ranges = (
            activation_ranges(int8)
            if e.int8_activations.value == "int8"
            else calibration_ranges(fp32, images, c.calibration_method.value, c.batch_size, e.int8_activations.value)
        )
        cache = write_cache(run_dir / "calibration.cache", ranges)
    # what DeepStream / TensorRT get: the uint8-activation model is for ONNX Runtime only, so TensorRT
    # builds INT8 from the fp32 model and the calibration cache (TLT's way)
    deployed = fp32 if data_type == "int8" and e.int8_activations.value == "uint8" else models[data_type]
    write_deepstream(
        run_dir,
        onnx_file=deployed,
        classes=classes,
        width=width,
        height=height,
        data_type=data_type,
        post=module.postprocessor_config,
        calibration_cache=cache,
        max_batch_size=e.max_batch_size,
    )
    if not e.engine:
        engine_note = "export.engine=false"
    elif deployed is fp32 and data_type == "int8":
        engine_note = (
            f"an INT8 engine from {fp32.name} needs its calibration cache: trtexec --onnx={fp32.name} --int8 "
            f"--calib={cache.name} --saveEngine=model.engine, or export with export.int8_activations=int8 "
            "(a QDQ model TensorRT builds directly)"
        )
    else:
        engine_note = build_engine(
            deployed,
            run_dir / "model.engine",
            data_type=data_type,
            height=height,
            width=width,
            max_batch_size=e.max_batch_size,
            workspace=e.max_workspace_size,
        )
    if engine_note:
        log.warning("TensorRT engine not built: %s", engine_note)

    # parity: outputs on real validation images, then mAP of every precision on the validation split
    from transferdet.data.converted import ConvertedDataset
    from transferdet.tasks.train import ensure_converted

    val = ConvertedDataset(ensure_converted(cfg)).split("val")
    sample = preprocessed([val[i].image_path for i in range(min(e.parity_images, len(val)))], module.aug)
    diff = output_parity(module.model, fp32, sample)
    metrics = {"parity/max_abs_diff_cov": diff["cov"], "parity/max_abs_diff_bbox": diff["bbox"]}
    maps = {"torch": evaluate_predictor(cfg, Predictor.for_module(module))}  # the module already loaded
    for precision, path in models.items():
        maps[precision] = evaluate_model(cfg, str(path), "onnxruntime")
    report = {
        "max_abs_diff": diff,
        "mAP": {},
        "AP": {},
        "engine": engine_note or "built",
        "files": {k: v.name for k, v in models.items()},
    }
    failures = []
    for name, (gts, dets, _, evaluator) in maps.items():
        result = evaluator.evaluate(gts, dets)
        report["mAP"][name] = result.mean_ap()
        report["AP"][name] = {cls: result.ap(cls) for cls in classes}
        metrics[f"parity/mAP_{name}"] = result.mean_ap()
    for name in models:
        drop = 100 * (report["mAP"]["torch"] - report["mAP"][name])
        metrics[f"parity/mAP_drop_points_{name}"] = drop
        if drop > e.max_map_drop:
            deltas = ", ".join(
                f"{cls} {100 * (report['AP'][name][cls] - report['AP']['torch'][cls]):+.2f}" for cls in classes
            )
            failures.append(
                f"{name} loses {drop:.2f} mAP points (> export.max_map_drop={e.max_map_drop:g}); "
                f"AP change per class, {name} - PyTorch: {deltas}"
            )
    for name, path in models.items():
        metrics[f"export/size_mb_{name}"] = path.stat().st_size / 1e6
    write_json_atomic(run_dir / "parity.json", report)
    log.info(
        "parity: max |torch - onnx| cov %.2e bbox %.2e; mAP %s",
        diff["cov"],
        diff["bbox"],
        ", ".join(f"{k} {v:.4f}" for k, v in report["mAP"].items()),
    )
    if failures:
        raise ParityError("; ".join(failures) + f" (details in {run_dir / 'parity.json'})")
    return metrics
