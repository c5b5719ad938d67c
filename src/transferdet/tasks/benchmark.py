"""``transferdet benchmark``: speed and accuracy of every model x runtime x precision x batch size, in one run.

``benchmark.models`` names the checkpoints (the first one's PyTorch fp32 rows are the speedup baseline);
``benchmark.exported`` names, per model, the run directory of its ``transferdet export``, whose ONNX models
are timed as they are. Writes ``benchmark.json``, ``benchmark.md`` and ``benchmark.png`` (see
:mod:`transferdet.bench.models`). ``augmentation.preprocessing.*`` overrides apply to every model: e.g.
``augmentation.preprocessing.output_image_width=1248 augmentation.preprocessing.output_image_height=384``
measures a model trained at 384x128 at the TLT tutorial's resolution (it is fully convolutional).
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from transferdet.bench.models import check_models, markdown, plot, run_benchmark, streams_markdown
from transferdet.config.overrides import DetectorOverrides
from transferdet.config.tasks import task_args
from transferdet.config.validate import typed
from transferdet.data.prepare import ensure_converted
from transferdet.detector import checkpoint
from transferdet.inference.backends import workers_or_default
from transferdet.utils.io import write_json_atomic, write_text_atomic
from transferdet.utils.rundir import write_config


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Measure every model, runtime, precision and batch size; write the table, JSON and chart."""
    b = task_args(cfg, "benchmark").benchmark
    models, overrides = check_models(b), DetectorOverrides.from_config(cfg)
    specs = {name: checkpoint.read_spec(path).with_overrides(overrides) for name, path in models.items()}
    write_config(run_dir, cfg, {"models_settings": {name: spec.as_config() for name, spec in specs.items()}})
    converted = ensure_converted(checkpoint.dataset_for_model(typed(cfg, "dataset"), next(iter(models.values()))))
    rows, streams = run_benchmark(
        models, b, overrides, typed(cfg, "export"), typed(cfg, "calibration"), converted, run_dir
    )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    summary = {
        "device": device,
        "threads": torch.get_num_threads(),
        "workers": workers_or_default(b.workers),
        "image_encoding": b.image_encoding.value,
    }
    write_json_atomic(run_dir / "benchmark.json", {**summary, "rows": rows, "video_streams": streams})
    write_text_atomic(run_dir / "benchmark.md", markdown(rows))
    plot(rows, run_dir / "benchmark.png")
    print(markdown(rows))
    if streams:
        write_text_atomic(run_dir / "streams.md", streams_markdown(streams))
        print(streams_markdown(streams))
    metrics = {}
    for r in rows:
        key = f"{r['model']}/{r['runtime']}_{r['precision']}/b{r['batch']}"
        metrics[f"benchmark/{key}/e2e_ms"] = r["e2e_ms_p50"]
        metrics[f"benchmark/{key}/speedup"] = r["speedup_e2e"]
    return metrics
