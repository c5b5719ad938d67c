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
    assert "trainable), on cuda" in trained["log"]  # the model's line names its device (Lightning 2.6 prints none)


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
            fresh=True,  # checked on GPU machines only: the user's way, with nothing shared
        )
        assert r.returncode == 0, r.stderr[-3000:]
        maps[precision] = json.loads((tmp_path / precision / "metrics.json").read_text())["mAP"]
    assert abs(maps["fp16"] - maps["fp32"]) <= 0.005, maps


def _jpegs(trained) -> list[bytes]:
    import io

    from PIL import Image

    out = []
    for p in _images(trained):
        buf = io.BytesIO()
        Image.fromarray(load_rgb(p)).save(buf, format="JPEG", quality=95)
        out.append(buf.getvalue())
    return out


def test_the_gpu_input_path_gives_the_host_paths_detections(trained):
    """Preprocessing on the GPU and thresholding there (only candidates cross) against the host preprocessing
    and the full maps on the host, through the same CUDA graph: the same detections, bit for bit."""
    predictor = Predictor.load(trained["ckpt"])
    images = [load_rgb(p) for p in _images(trained)]
    batch = torch.stack([predictor.preprocess(im) for im in images])
    on_device = predictor.preprocess_batch(images)
    assert on_device.device.type == "cuda" and torch.equal(on_device.cpu(), batch)
    expected = predictor.postprocessor(*predictor.outputs(batch))
    found = predictor(images)
    assert sum(len(d.boxes) for d in found) > 0
    for a, b, im in zip(found, expected, images, strict=True):
        b = predictor.to_image_coordinates(b, im.shape[1], im.shape[0])
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_jpegs_are_decoded_on_the_gpu_and_streamed_by_threads_on_their_own_cuda_streams(trained):
    from transferdet.data.images import decode_rgb
    from transferdet.inference.device import decode_batch

    predictor = Predictor.load(trained["ckpt"], precision=Precision.fp16)
    datas = _jpegs(trained)
    decoded = decode_batch(datas, predictor.device)
    for gpu, data in zip(decoded, datas, strict=True):
        assert isinstance(gpu, torch.Tensor) and gpu.device.type == "cuda"
        host = torch.from_numpy(decode_rgb(data, "x")).int()
        diff = (gpu.cpu().permute(1, 2, 0).int() - host).abs().float()
        # nvJPEG against libjpeg-turbo (another IDCT and chroma upsampling): 2.3 levels on average on an H200
        # (2026-11-30), where the image one pixel off differs by far more
        shifted = (host[:, 1:] - host[:, :-1]).abs().float().mean()
        assert float(diff.mean()) < min(4.0, float(shifted) / 2), (float(diff.mean()), float(shifted))
    files = datas * 6
    serial = [d for i in range(0, len(files), 4) for d in predictor(files[i : i + 4])]
    streamed = [d for _, _, found in predictor.stream(files, lambda b: b, batch_size=4, workers=8) for d in found]
    assert len(streamed) == len(serial) == len(files)
    for a, b in zip(streamed, serial):  # eight threads, eight CUDA streams, one graph: the same numbers
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
