"""The torch runtime on a CUDA GPU: the model runs channels_last as CUDA graphs, in fp32 and fp16, and
``train``/``evaluate``/``infer`` take the GPU with no flags. Skipped where there is no GPU (the CI machine):
run them there with ``pytest -m gpu``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import run_cli, small_synth_config
from transferdet.data.loader import load_rgb
from transferdet.data.synth import generate

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
SIZE = ["augmentation.preprocessing.output_image_width=256", "augmentation.preprocessing.output_image_height=128"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu")
    root = base / "ds"
    generate(small_synth_config(64, seed=3, image_width=256, image_height=128), root, progress=False)
    r = run_cli(
        "train",
        f"dataset.root={root}",
        "model=resnet18",
        "training.num_workers=2",
        "training.num_epochs=4",
        "training.batch_size_per_gpu=8",
        "callbacks.progress_bar=null",
        *SIZE,
        f"hydra.run.dir={base / 'train'}",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # Lightning's own line: the trainer took the GPU without being told to
    assert "GPU available: True (cuda), used: True" in r.stdout + r.stderr
    return {
        "root": root,
        "ckpt": base / "train" / "checkpoints" / "last.ckpt",
        "images": sorted((root / "image_2").glob("*.png"))[:8],
    }


def _cpu_reference(ckpt, batch):
    from transferdet.inference.predictor import load_module

    with torch.no_grad():
        cov, bbox = load_module(ckpt).model(batch)
    return cov.numpy(), bbox.numpy()


def test_cuda_graphs_give_the_eager_cpu_outputs_per_shape(trained):
    from transferdet.inference.predictor import Predictor

    predictor = Predictor.load(trained["ckpt"])
    assert predictor.device.type == "cuda" and predictor.graphs is not None
    batch = torch.stack([predictor.preprocess(load_rgb(p)) for p in trained["images"][:3]])
    ref_cov, ref_bbox = _cpu_reference(trained["ckpt"], batch)
    for b in (3, 1, 3):  # a new shape captures its own graph; going back replays the first one
        cov, bbox = predictor.outputs(batch[:b])
        np.testing.assert_allclose(cov, ref_cov[:b], atol=1e-4)  # fp32 without TF32: the export's parity bar
        np.testing.assert_allclose(bbox, ref_bbox[:b], atol=1e-3 * max(1.0, np.abs(ref_bbox).max()))
    assert set(predictor.graphs.graphs) == {(3, *batch.shape[1:]), (1, *batch.shape[1:])}

    half = Predictor.load(trained["ckpt"], precision="fp16")
    assert next(half.module.model.parameters()).dtype == torch.float16
    cov, bbox = half.outputs(batch)
    assert cov.dtype == np.float32
    np.testing.assert_allclose(cov, ref_cov, atol=5e-3)
    np.testing.assert_allclose(bbox, ref_bbox, atol=2e-2 * max(1.0, np.abs(ref_bbox).max()))


def test_streaming_threads_share_the_graphs_safely(trained):
    from transferdet.inference.predictor import Predictor

    predictor = Predictor.load(trained["ckpt"], precision="fp16")
    files = trained["images"] * 4
    serial = [d for i in range(0, len(files), 2) for d in predictor([load_rgb(f) for f in files[i : i + 2]])]
    streamed = [d for _, _, found in predictor.stream(files, load_rgb, batch_size=2, workers=6) for d in found]
    assert len(streamed) == len(serial) == len(files)
    for a, b in zip(streamed, serial):  # the same graph on the same input: the same numbers
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_evaluate_in_fp16_scores_what_fp32_scores(trained, tmp_path, cli):
    maps = {}
    for precision in ("fp32", "fp16"):
        r = cli(
            "evaluate",
            f"checkpoint={trained['ckpt']}",
            f"dataset.root={trained['root']}",
            f"precision={precision}",
            f"hydra.run.dir={tmp_path / precision}",
        )
        assert r.returncode == 0, r.stderr[-3000:]
        maps[precision] = json.loads((tmp_path / precision / "metrics.json").read_text())["mAP"]
    assert abs(maps["fp16"] - maps["fp32"]) <= 0.005, maps
