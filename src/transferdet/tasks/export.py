"""``transferdet export checkpoint=PATH export.data_type=fp32|fp16|int8``.

Writes the ONNX models, the TensorRT calibration cache (int8) and engine (where TensorRT exists), the
DeepStream configs and the Triton repository (``export.triton=true``), see
:mod:`transferdet.export.exporter`, and ``parity.json``: PyTorch vs ONNX Runtime outputs on validation
images and the mAP of each model. A model that loses more than ``export.max_map_drop`` points fails the
task (the portable QDQ model only warns); its files stay, for inspection.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from transferdet.config.overrides import DetectorOverrides
from transferdet.config.schema import DataType
from transferdet.config.tasks import task_args
from transferdet.config.validate import typed
from transferdet.data.prepare import ensure_converted
from transferdet.detector import checkpoint
from transferdet.errors import ConfigError
from transferdet.export.calibration import calibration_images, load_calibration_file
from transferdet.export.exporter import check_settings, export_models
from transferdet.export.parity import check_parity
from transferdet.utils.rundir import write_config


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Export the checkpoint and check the exports against it."""
    args, e, c = task_args(cfg, "export"), typed(cfg, "export"), typed(cfg, "calibration")
    if not args.checkpoint:
        raise ConfigError("checkpoint", None, "a transferdet checkpoint file (checkpoint=PATH)")
    check_settings(e)
    loaded = checkpoint.load(args.checkpoint, DetectorOverrides.from_config(cfg))
    spec = loaded.spec
    write_config(run_dir, cfg, spec.as_config())
    # the parity check needs the dataset: a problem with it shows before anything is written
    converted = ensure_converted(checkpoint.dataset_for_model(typed(cfg, "dataset"), args.checkpoint, spec.classes))
    images = None
    if e.data_type is DataType.int8:  # read (and check) the calibration data before writing anything
        images = (
            load_calibration_file(c.cal_data_file, spec.height, spec.width)
            if c.cal_data_file
            else calibration_images(converted, spec.preprocessing, c.batches * c.batch_size)
        )
    exported = export_models(spec, loaded.network, run_dir, e, c, images, (loaded.training or {}).get("dataset"))
    return check_parity(spec, loaded.network, exported, converted, run_dir, e.parity_images, e.max_map_drop)
