"""The torch runtime on a CUDA GPU: the model runs channels_last as CUDA graphs, in fp32 and fp16, and
``train``/``evaluate``/``infer`` take the GPU with no flags. Skipped where there is no GPU (the CI machine):
run them there with ``pytest -m gpu``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from transferdet.config.tasks import Precision
from transferdet.data.images import load_rgb
from transferdet.detector import checkpoint
from transferdet.inference.predictor import Predictor

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _images(trained) -> list:
    return sorted(trained["images"].glob("*.png"))[:8]


def _cpu_reference(ckpt, batch):
    with torch.no_grad():
        cov, bbox = checkpoint.load(ckpt).network(batch)
    return cov.numpy(), bbox.numpy()


def test_training_takes_the_gpu_without_being_told(trained):
    assert "GPU available: True (cuda), used: True" in trained["log"]  # Lightning's own line


def test_cuda_graphs_give_the_eager_cpu_outputs_per_shape(trained):
    predictor = Predictor.load(trained["ckpt"])
    graphs = predictor.backend.graphs
    assert predictor.device.type == "cuda" and graphs is not None
    batch = torch.stack([predictor.preprocess(load_rgb(p)) for p in _images(trained)[:3]])
    ref_cov, ref_bbox = _cpu_reference(trained["ckpt"], batch)
    for b in (3, 1, 3):  # a new shape captures its own graph; going back replays the first one
        cov, bbox = predictor.outputs(batch[:b])
        np.testing.assert_allclose(cov, ref_cov[:b], atol=1e-4)  # fp32 without TF32: the export's parity bar
        np.testing.assert_allclose(bbox, ref_bbox[:b], atol=1e-3 * max(1.0, np.abs(ref_bbox).max()))
    assert set(graphs.graphs) == {(3, *batch.shape[1:]), (1, *batch.shape[1:])}

    half = Predictor.load(trained["ckpt"], precision=Precision.fp16)
    assert half.backend.graphs.dtype == torch.float16
    cov, bbox = half.outputs(batch)
    assert cov.dtype == np.float32
    np.testing.assert_allclose(cov, ref_cov, atol=5e-3)
    np.testing.assert_allclose(bbox, ref_bbox, atol=2e-2 * max(1.0, np.abs(ref_bbox).max()))


def test_streaming_threads_share_the_graphs_safely(trained):
    predictor = Predictor.load(trained["ckpt"], precision=Precision.fp16)
    files = _images(trained) * 4
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
