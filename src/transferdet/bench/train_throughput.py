"""Training throughput: data loader included vs the model step alone, in one run.

    python -m transferdet.bench.train_throughput [--depth 18] [--steps 6] [--workers 0 2] [--out FILE]

For each resolution (384x1248, the TLT tutorial's, and 128x384, the quickstart's) a synthetic dataset of
that size is generated and converted; then the same training step (forward, rasterizer, cost,
backward, Adam) runs (a) on batches from the real data loader (decode, augmentation, collate) and
(b) on one pre-loaded batch. Goal: (a) >= 90 % of (b). Ratios are within one run; absolute images/s
depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from transferdet.config.schema import SynthConfig, register_configs
from transferdet.config.validate import typed
from transferdet.data.convert import write_converted
from transferdet.data.kitti import scan_dataset
from transferdet.data.synth import generate
from transferdet.training.datamodule import DetectionDataModule
from transferdet.training.setup import module_from_config
from transferdet.utils.io import write_json_atomic

RESOLUTIONS = [(1248, 384), (384, 128)]
CLASSES = ["car", "pedestrian", "cyclist"]


def _module(width: int, height: int, depth: int):
    register_configs()
    with initialize_config_module("transferdet.conf", version_base="1.3"):
        cfg = compose(
            "train",
            [
                f"model=resnet{depth}",
                f"augmentation.preprocessing.output_image_width={width}",
                f"augmentation.preprocessing.output_image_height={height}",
            ],
        )
    return cfg, module_from_config(cfg)


def _step(module, optimizer, batch) -> None:
    cov, bbox = module.model(batch.images)
    targets = module.rasterizer(batch.boxes, batch.classes, batch.image_index, len(batch.images))
    loss = module.cost(cov, bbox, targets)[0]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def measure(width: int, height: int, depth: int, batch_size: int, steps: int, workers: int, work: Path) -> dict:
    """Training images/s at one resolution with the data loader and with one pre-loaded batch."""
    root = work / f"ds_{width}x{height}"
    if not root.exists():
        generate(
            SynthConfig(
                num_images=batch_size * (steps + 2) + 8,
                image_width=width,
                image_height=height,
                class_frequencies={"car": 0.68, "pedestrian": 0.22, "cyclist": 0.10},
            ),
            root,
            progress=False,
        )
        cfg, _ = _module(width, height, depth)
        d = OmegaConf.to_object(OmegaConf.merge(cfg.dataset, {"root": str(root), "val_split": 5}))
        records, warnings = scan_dataset(root, progress=False)
        (root / "converted").mkdir()
        write_json_atomic(
            root / "converted" / "manifest.json",
            write_converted(root / "converted", records, warnings, d, progress=False),
        )
    cfg, module = _module(width, height, depth)
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
    dm = DetectionDataModule(
        root / "converted",
        typed(cfg, "augmentation"),
        batch_size=batch_size,
        eval_batch_size=batch_size,
        num_workers=workers,
        seed=0,
    )
    dm.setup()
    loader = iter(dm.train_dataloader())
    first = next(loader)
    _step(module, optimizer, first)  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        _step(module, optimizer, next(loader))
    with_loader = steps * batch_size / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(steps):
        _step(module, optimizer, first)
    model_only = steps * batch_size / (time.perf_counter() - t)
    return {
        "resolution": f"{width}x{height}",
        "workers": workers,
        "images_per_s_with_loader": with_loader,
        "images_per_s_model_only": model_only,
        "ratio": with_loader / model_only,
    }


def main() -> None:
    """Run the measurement from the command line and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--out", default="bench_train_throughput.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in RESOLUTIONS:
            for workers in args.workers:
                rows.append(measure(width, height, args.depth, args.batch_size, args.steps, workers, Path(tmp)))
                r = rows[-1]
                print(
                    f"resnet{args.depth} {r['resolution']:>9} workers={workers}: "
                    f"{r['images_per_s_with_loader']:7.2f} img/s with loader, "
                    f"{r['images_per_s_model_only']:7.2f} img/s model only, ratio {r['ratio']:.3f}",
                    flush=True,
                )
    Path(args.out).write_text(
        json.dumps({"depth": args.depth, "batch_size": args.batch_size, "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
