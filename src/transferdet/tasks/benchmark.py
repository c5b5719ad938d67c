"""``transferdet benchmark``: speed of every model x runtime x precision x batch size, in one run.

Models are ``benchmark.models`` (name -> checkpoint, e.g. ``unpruned`` and ``pruned``). Each is measured
as PyTorch fp32 and, exported on the fly, ONNX Runtime fp32 and int8 (calibrated on training images).
On a CUDA GPU PyTorch runs there, channels_last as CUDA graphs, in fp32 and fp16, and the batch sizes
``benchmark.gpu_batch_sizes`` are measured too. Two timings per row, in the same run:

* network-only: a preprocessed batch on the runtime's device in, raw outputs on the host out, batch after
  batch;
* end-to-end: PNG bytes in, detections out (decode, preprocess, network, clustering). The latency
  (ms/img p50, p90) is one batch at a time; the throughput (img/s, 30-FPS streams, e2e / network) is a
  stream of images through ``Predictor.stream`` with ``benchmark.workers`` batches in flight, the way
  ``infer`` runs.

Rows report ms/image (p50, p90), images/s, 30-FPS streams sustained, model size, mAP on the validation
split and the speedup over the first model's PyTorch fp32 row. Writes ``benchmark.json``,
``benchmark.md`` and ``benchmark.png`` into the run directory. Command-line overrides of the model's
groups apply on top of each checkpoint's settings, as in ``infer``: e.g.
``augmentation.preprocessing.output_image_width=1248 augmentation.preprocessing.output_image_height=384``
measures a model trained at 384x128 at the TLT tutorial's resolution (it is fully convolutional).
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from transferdet.config.validate import positive_int
from transferdet.errors import ConfigError
from transferdet.inference.predictor import Predictor, threads_per_worker
from transferdet.utils.io import atomic_path, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


def _timings(fn, repeats: int) -> np.ndarray:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return np.array(out)


def _encoded_images(cfg: DictConfig, count: int) -> list[bytes]:
    from transferdet.data.converted import ConvertedDataset
    from transferdet.tasks.train import ensure_converted

    val = ConvertedDataset(ensure_converted(cfg)).split("val")
    return [Path(val[i % len(val)].image_path).read_bytes() for i in range(count)]


def _decode(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


def measure(
    predictor: Predictor,
    images: list[bytes],
    batch: int,
    repeats: int,
    streamer: Predictor | None = None,
    workers: int = 1,
) -> dict[str, float]:
    """Network-only and end-to-end latency of ``batch`` images at a time, and the end-to-end throughput of
    ``images`` streamed through ``streamer`` (default: ``predictor``) with ``workers`` batches in flight."""
    decoded = [_decode(b) for b in images[:batch]]
    # network-only starts from a preprocessed batch already on the runtime's device (as the anchors do)
    tensors = torch.stack([predictor.preprocess(im) for im in decoded]).to(predictor.device)
    network = _timings(lambda: predictor.outputs(tensors), repeats) / batch
    e2e = _timings(lambda: predictor([_decode(b) for b in images[:batch]]), repeats) / batch

    def stream():
        for _ in (streamer or predictor).stream(images, _decode, batch, workers):
            pass

    streamed = _timings(stream, 3) / len(images)
    return {
        "network_ms_p50": 1e3 * float(np.median(network)),
        "network_ms_p90": 1e3 * float(np.percentile(network, 90)),
        "e2e_ms_p50": 1e3 * float(np.median(e2e)),
        "e2e_ms_p90": 1e3 * float(np.percentile(e2e, 90)),
        "network_images_per_s": 1.0 / float(np.median(network)),
        "e2e_images_per_s": 1.0 / float(np.median(streamed)),
        "e2e_serial_images_per_s": 1.0 / float(np.median(e2e)),
    }


def _variants(cfg: DictConfig, name: str, checkpoint: str, work: Path, precisions: list[str]) -> list[tuple]:
    """(model, runtime, precision, path) rows of one checkpoint; ONNX models exported into ``work``."""
    from transferdet.export.onnx_export import export_onnx
    from transferdet.export.quantize import quantize_int8
    from transferdet.inference.predictor import load_module
    from transferdet.tasks.calibrate import calibration_images
    from transferdet.tasks.evaluate import user_overrides
    from transferdet.tasks.export import add_metadata

    module = load_module(checkpoint, user_overrides())
    rows = [(name, "torch", "fp32", Path(checkpoint))]
    if torch.cuda.is_available():  # on a GPU PyTorch also runs fp16 (channels_last, CUDA graphs)
        rows.append((name, "torch", "fp16", Path(checkpoint)))
    if {"fp32", "int8"} & set(precisions):
        config = OmegaConf.to_container(OmegaConf.create(module.hparams["config"]), resolve=True)
        fp32 = export_onnx(module.model, work / f"{name}_fp32.onnx", module.height, module.width)
        add_metadata(fp32, config, module.classes)
        if "fp32" in precisions:
            rows.append((name, "onnxruntime", "fp32", fp32))
        if "int8" in precisions:
            images = calibration_images(cfg, module.aug, 32)
            int8 = quantize_int8(fp32, work / f"{name}_int8.onnx", images)
            add_metadata(int8, config, module.classes)
            rows.append((name, "onnxruntime", "int8", int8))
    return rows


def markdown(rows: list[dict]) -> str:
    head = (
        "| model | runtime | precision | batch | e2e ms/img p50 | p90 | e2e img/s streamed | network ms/img p50 | "
        "network img/s | e2e / network | 30-FPS streams | size MB | mAP | speedup e2e |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['precision']} | {r['batch']} | {r['e2e_ms_p50']:.2f} | "
            f"{r['e2e_ms_p90']:.2f} | {r['e2e_images_per_s']:.1f} | {r['network_ms_p50']:.2f} | "
            f"{r['network_images_per_s']:.1f} | {r['e2e_over_network']:.2f} | {r['streams_30fps']:.1f} | "
            f"{r['size_mb']:.2f} | {r['mAP']:.4f} | {r['speedup_e2e']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = min(r["batch"] for r in rows)
    sel = [r for r in rows if r["batch"] == batch]
    labels = [f"{r['model']}\n{r['runtime']} {r['precision']}" for r in sel]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(sel)), 4.5), dpi=100)
    x = np.arange(len(sel))
    ax.bar(x - 0.2, [r["network_images_per_s"] for r in sel], 0.4, label="network only")
    ax.bar(x + 0.2, [r["e2e_images_per_s"] for r in sel], 0.4, label="end to end")
    for i, r in enumerate(sel):
        ax.text(
            i + 0.2,
            r["e2e_images_per_s"],
            f"{r['speedup_e2e']:.1f}x\nmAP {r['mAP']:.3f}",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("images / s")
    ax.set_title(f"throughput at batch {batch} (speedup: end to end vs the first PyTorch fp32 row)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    from transferdet.tasks.evaluate import evaluate_predictor, user_overrides

    b = cfg.benchmark
    models = dict(b.models or {})
    if not models:
        raise ConfigError("benchmark.models", None, "a map name -> checkpoint, e.g. benchmark.models={unpruned: PATH}")
    for name, path in models.items():
        if not Path(path).is_file():
            raise ConfigError(f"benchmark.models.{name}", path, "an existing transferdet checkpoint file")
    torch.set_num_threads(int(b.threads) if b.threads else torch.get_num_threads())
    workers = positive_int(
        "benchmark.workers", b.get("workers", 2), "an integer >= 1 (batches in flight in the streamed run)"
    )
    batch_sizes = [
        positive_int(f"benchmark.batch_sizes[{i}]", v, "an integer >= 1") for i, v in enumerate(b.batch_sizes)
    ]
    if torch.cuda.is_available():  # larger batches where a GPU has the room for them
        batch_sizes += [
            positive_int(f"benchmark.gpu_batch_sizes[{i}]", v, "an integer >= 1")
            for i, v in enumerate(b.get("gpu_batch_sizes") or [])
            if v not in batch_sizes
        ]
    images = _encoded_images(cfg, max(16, 2 * workers * max(batch_sizes)))
    variants = [
        v for name, path in models.items() for v in _variants(cfg, name, str(path), run_dir, list(b.precisions))
    ]
    rows: list[dict] = []
    for model, runtime, precision, path in variants:
        # the checkpoint's settings with the command line's on top (e.g. another input size, as in infer)
        predictor = Predictor.load(
            str(path), runtime, user_overrides(), precision=precision if runtime == "torch" else "fp32"
        )
        # the streamed run shares the cores out between its workers (ONNX Runtime threads are per session)
        streamer = (
            Predictor.load(str(path), runtime, user_overrides(), threads=threads_per_worker(workers))
            if runtime == "onnxruntime" and workers > 1
            else predictor
        )
        gts, dets, _, evaluator = evaluate_predictor(cfg, predictor) if b.map else ([], [], None, None)
        m_ap = evaluator.evaluate(gts, dets).mean_ap() if b.map else float("nan")
        for batch in batch_sizes:
            r = measure(predictor, images, int(batch), int(b.repeats), streamer, workers)
            r.update(
                model=model,
                runtime=runtime,
                precision=precision,
                batch=int(batch),
                mAP=m_ap,
                size_mb=Path(path).stat().st_size / 1e6,
            )
            rows.append(r)
            log.info(
                "%s %s %s batch %d: %.2f ms/img end to end (%.1f img/s streamed), %.2f network",
                model,
                runtime,
                precision,
                batch,
                r["e2e_ms_p50"],
                r["e2e_images_per_s"],
                r["network_ms_p50"],
            )
    base = {
        r["batch"]: r
        for r in rows
        if r["model"] == variants[0][0] and r["runtime"] == "torch" and r["precision"] == "fp32"
    }
    for r in rows:
        r["speedup_e2e"] = base[r["batch"]]["e2e_ms_p50"] / r["e2e_ms_p50"]
        r["e2e_over_network"] = r["e2e_images_per_s"] / r["network_images_per_s"]
        r["streams_30fps"] = r["e2e_images_per_s"] / 30.0
    write_json_atomic(
        run_dir / "benchmark.json",
        {
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "threads": torch.get_num_threads(),
            "workers": workers,
            "rows": rows,
        },
    )
    write_text_atomic(run_dir / "benchmark.md", markdown(rows))
    plot(rows, run_dir / "benchmark.png")
    print(markdown(rows))
    metrics = {}
    for r in rows:
        key = f"{r['model']}/{r['runtime']}_{r['precision']}/b{r['batch']}"
        metrics[f"benchmark/{key}/e2e_ms"] = r["e2e_ms_p50"]
        metrics[f"benchmark/{key}/speedup"] = r["speedup_e2e"]
    return metrics
