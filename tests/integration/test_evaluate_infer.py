"""evaluate and infer through the CLI, on a small trained checkpoint: infer's label files scored by
``evaluate predictions=... labels=...`` reproduce what ``evaluate checkpoint=...`` reports."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import LOW_CONFIDENCE, SMALL
from transferdet.config.overrides import DetectorOverrides
from transferdet.data.kitti import read_label_file
from transferdet.detector import checkpoint
from transferdet.inference.backends import machine_cores
from transferdet.inference.predictor import Predictor
from transferdet.models.detectnet import STRIDE
from transferdet.postprocess.flip import unflip

SIZE = SMALL
LOW = LOW_CONFIDENCE


def test_infer_on_a_folder_reproduces_evaluate(trained, tmp_path, cli):
    r = cli(
        "evaluate",
        f"checkpoint={trained['ckpt']}",
        f"dataset.root={trained['root']}",
        *LOW,
        f"hydra.run.dir={tmp_path / 'ev_ckpt'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    direct = json.loads((tmp_path / "ev_ckpt" / "metrics.json").read_text())
    assert (tmp_path / "ev_ckpt" / "pr_curves.png").read_bytes()[:4] == b"\x89PNG"

    r = cli(
        "infer",
        f"checkpoint={trained['ckpt']}",
        f"input={trained['images']}",
        "batch_size=3",
        *LOW,
        f"hydra.run.dir={tmp_path / 'inf'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    labels = sorted((tmp_path / "inf" / "labels").glob("*.txt"))
    assert [p.stem for p in labels] == sorted(trained["val_ids"])
    assert len(list((tmp_path / "inf" / "images_annotated").glob("*.png"))) == len(labels)
    detections = [o for p in labels for o in read_label_file(p, allow_score=True)]
    assert detections and all(o.score is not None for o in detections)

    r = cli(
        "evaluate",
        f"predictions={tmp_path / 'inf' / 'labels'}",
        f"labels={trained['labels']}",
        f"hydra.run.dir={tmp_path / 'ev_files'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    from_files = json.loads((tmp_path / "ev_files" / "metrics.json").read_text())
    keys = ("mAP", "AP/car", "AP/pedestrian", "AP/cyclist", "mAP_moderate", "AP50_coco", "mAP_interval_low")
    for key in (*keys, "mAP_interval_high", "AP_interval_low/car", "AP_interval_high/car"):
        a, b = direct[key], from_files[key]
        assert (a is None and b is None) or abs(a - b) < 1e-6, key
    assert 0 <= direct["mAP"] <= 1 and direct["num_images"] == len(labels)
    # the bootstrap interval over the images, on the terminal too
    assert direct["mAP_interval_low"] <= direct["mAP_interval_high"] and direct["interval_confidence"] == 0.9
    assert "AP 90% intervals over the images: car" in r.stderr


def test_evaluate_scores_a_whole_folder_with_val_split_100(trained, tmp_path, cli):
    r = cli(
        "evaluate",
        f"checkpoint={trained['ckpt']}",
        f"dataset.root={trained['root']}",
        "dataset.val_split=100",
        f"dataset.converted_dir={tmp_path / 'every_image'}",
        *LOW,
        f"hydra.run.dir={tmp_path / 'ev_all'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "ev_all" / "metrics.json").read_text())
    assert metrics["num_images"] == 48 > len(trained["val_ids"])  # every image, not the 20 % validation split
    assert 0 <= metrics["mAP"] <= 1


def test_infer_on_a_video_writes_labels_per_frame_and_an_annotated_video(trained, tmp_path, cli):
    video = tmp_path / "drive.mp4"
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(trained["images"].glob("*.png"))[:6]]
    with av.open(str(video), "w") as out:
        stream = out.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 128, 64, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    r = cli(
        "infer",
        f"checkpoint={trained['ckpt']}",
        f"input={video}",
        "batch_size=4",
        *LOW,
        f"hydra.run.dir={tmp_path / 'inf'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    labels = sorted((tmp_path / "inf" / "labels").glob("*.txt"))
    assert [p.name for p in labels] == [f"drive_{i:06d}.txt" for i in range(6)]
    with av.open(str(tmp_path / "inf" / "drive_annotated.mp4")) as annotated:
        decoded = [f.to_ndarray(format="rgb24") for f in annotated.decode(video=0)]
    assert len(decoded) == 6 and decoded[0].shape == (64, 128, 3)
    assert json.loads((tmp_path / "inf" / "metrics.json").read_text())["infer/num_images"] == 6


def test_infer_and_evaluate_refuse_bad_inputs(trained, tmp_path, cli):
    r = cli(
        "infer", f"checkpoint={trained['ckpt']}", f"input={tmp_path / 'nothing'}", f"hydra.run.dir={tmp_path / 'a'}"
    )
    assert r.returncode == 2 and "config key 'input'" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(trained["ckpt"].read_bytes()[:1000])
    r = cli("infer", f"checkpoint={bad}", f"input={trained['images']}", f"hydra.run.dir={tmp_path / 'b'}")
    assert r.returncode == 2 and f"{bad}: not a readable torch file" in r.stderr and "Traceback" not in r.stderr
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "zzz.txt").write_text("car 0 0 0 1 1 5 5 0 0 0 0 0 0 0 0.5\n")
    r = cli("evaluate", f"predictions={preds}", f"labels={trained['labels']}", f"hydra.run.dir={tmp_path / 'c'}")
    assert r.returncode == 2 and f"{preds / 'zzz.txt'}: prediction file has no ground-truth label file" in r.stderr
    r = cli("evaluate", f"hydra.run.dir={tmp_path / 'd'}")
    assert r.returncode == 2 and "config key 'checkpoint'" in r.stderr
    r = cli(
        "infer",
        f"checkpoint={trained['ckpt']}",
        f"input={trained['images']}",
        "workers=0",
        f"hydra.run.dir={tmp_path / 'e'}",
    )
    assert r.returncode == 2 and "config key 'workers'" in r.stderr and "an integer >= 1" in r.stderr
    r = cli(
        "infer",
        f"checkpoint={trained['ckpt']}",
        f"input={trained['images']}",
        "precision=fp8",
        f"hydra.run.dir={tmp_path / 'f'}",
    )
    assert r.returncode == 2 and "config key 'precision'" in r.stderr and "fp32, fp16" in r.stderr
    import torch

    if not torch.cuda.is_available():  # fp16 is the GPU's (tests/integration/test_gpu.py runs it there)
        r = cli(
            "infer",
            f"checkpoint={trained['ckpt']}",
            f"input={trained['images']}",
            "precision=fp16",
            f"hydra.run.dir={tmp_path / 'g'}",
        )
        assert r.returncode == 2 and "config key 'precision'" in r.stderr and "CUDA GPU" in r.stderr
        assert not (tmp_path / "g" / "labels").exists()


def test_stream_gives_what_serial_calls_give_in_order_with_bounded_look_ahead(trained):
    import threading

    from transferdet.data.images import load_rgb
    from transferdet.errors import DataError
    from transferdet.inference.predictor import Predictor

    predictor = Predictor.load(trained["ckpt"])
    files = sorted(trained["images"].glob("*.png")) * 2  # 2 x the validation images
    serial = [d for i in range(0, len(files), 3) for d in predictor([load_rgb(f) for f in files[i : i + 3]])]
    loaded, lock, most_ahead = [0], threading.Lock(), [0]
    yielded = 0

    def load(path):
        with lock:
            loaded[0] += 1
            most_ahead[0] = max(most_ahead[0], loaded[0] - yielded)
        return load_rgb(path)

    streamed, order = [], []
    for chunk, images, found in predictor.stream(files, load, batch_size=3, workers=2):
        assert len(chunk) == len(images) == len(found) <= 3
        order += chunk
        streamed += found
        yielded += len(chunk)
    assert order == files and len(streamed) == len(serial)
    for a, b in zip(streamed, serial):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.class_ids, b.class_ids)
    assert most_ahead[0] <= 2 * 2 * 3  # 2 x workers batches in flight at most
    # a file that cannot be read stops the stream with its own error
    broken = trained["images"].parent / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        list(predictor.stream(files[:4] + [broken] + files[:4], load_rgb, batch_size=2, workers=2))


def test_a_predictor_takes_arrays_tensors_or_file_bytes_alike(trained):
    """Decoded arrays, ``[3, h, w]`` uint8 tensors and the files' bytes (decoded in the batch, on a GPU's
    nvJPEG for JPEGs where there is one) are the same images: the same detections, in image pixels."""
    from transferdet.data.images import load_rgb

    predictor = Predictor.load(trained["ckpt"])
    files = sorted(trained["images"].glob("*.png"))[:4]
    arrays = [load_rgb(f) for f in files]
    expected = predictor(arrays)
    assert sum(len(d.boxes) for d in expected) > 0
    tensors = [torch.from_numpy(a).permute(2, 0, 1) for a in arrays]
    mixed = [f.read_bytes() if i % 2 else a for i, (f, a) in enumerate(zip(files, arrays))]
    for given in (tensors, [f.read_bytes() for f in files], mixed):
        for a, b in zip(predictor(given), expected, strict=True):
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.scores, b.scores)
    streamed = [d for _, _, found in predictor.stream(files, lambda f: f.read_bytes(), 3, 2) for d in found]
    assert [len(d.boxes) for d in streamed] == [len(d.boxes) for d in expected]


@pytest.mark.parametrize("flip", [False, True])
def test_maps_kept_as_tensors_give_the_host_maps_detections(trained, flip):
    """What a GPU predictor does (the network's maps kept as tensors, thresholded, bounded and clustered where
    they are, test-time flip averaged there), here with the CPU's tensors: the host path's detections."""
    from transferdet.data.images import load_rgb

    overrides = DetectorOverrides(postprocessing={"test_time_flip": flip})
    predictor = Predictor.load(trained["ckpt"], overrides=overrides)
    images = [load_rgb(f) for f in sorted(trained["images"].glob("*.png"))[:6]]
    expected = predictor(images)
    assert sum(len(d.boxes) for d in expected) > 0
    predictor.maps = predictor.spec.network_outputs(predictor.backend.tensors)
    for a, b in zip(predictor(images), expected, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, rtol=0, atol=1e-9)
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-9)


def test_gpu_stages_times_every_stage_of_a_batch(trained, tmp_path):
    """``python -m transferdet.bench.gpu_stages`` (on the CPU here: the same stages, a smoke test of the script):
    every stage measured, the JSON written."""
    import subprocess
    import sys

    out = tmp_path / "stages.json"
    r = subprocess.run(
        [sys.executable, "-m", "transferdet.bench.gpu_stages", str(trained["ckpt"]), str(trained["images"])]
        + ["--batch", "3", "--repeats", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["batch"] == 3 and result["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    for key in ("decode_gpu_ms", "decode_host_ms", "preprocess_ms", "network_ms", "clustering_ms", "end_to_end_ms"):
        assert result[key] > 0, key
    assert result["candidates_per_image"] >= 0 and "end_to_end_ms" in r.stdout


def test_export_then_onnxruntime_infer_matches_torch(trained, tmp_path, cli):
    r = cli(
        "export",
        f"checkpoint={trained['ckpt']}",
        f"dataset.root={trained['root']}",
        "export.data_type=int8",
        "calibration.batches=2",
        "calibration.batch_size=4",
        "export.max_map_drop=100",
        f"hydra.run.dir={tmp_path / 'export'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "export"
    for name in (
        "model_fp32.onnx",
        "model_int8_onnxruntime.onnx",
        "model_int8_qdq.onnx",
        "deepstream_app_config.txt",
        "calibration.cache",
        "nvinfer_config.txt",
        "labels.txt",
        "parity.json",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["parity/max_abs_diff_cov"] < 1e-4
    assert metrics["parity/mAP_torch"] == pytest.approx(metrics["parity/mAP_fp32"], abs=1e-6)
    assert "parity/mAP_int8" in metrics and metrics["export/size_mb_int8"] < 0.4 * metrics["export/size_mb_fp32"]

    scores = {}
    for runtime, model in (("torch", trained["ckpt"]), ("onnxruntime", out / "model_fp32.onnx")):
        r = cli(
            "infer",
            f"checkpoint={model}",
            f"runtime={runtime}",
            f"input={trained['images']}",
            f"hydra.run.dir={tmp_path / runtime}",
        )
        assert r.returncode == 0, r.stderr[-3000:]
        r = cli(
            "evaluate",
            f"predictions={tmp_path / runtime / 'labels'}",
            f"labels={trained['labels']}",
            f"hydra.run.dir={tmp_path / ('ev_' + runtime)}",
        )
        assert r.returncode == 0, r.stderr[-3000:]
        scores[runtime] = json.loads((tmp_path / ("ev_" + runtime) / "metrics.json").read_text())["mAP"]
    assert abs(scores["torch"] - scores["onnxruntime"]) < 0.005  # within 0.5 point

    r = cli(
        "infer",
        f"checkpoint={trained['ckpt']}",
        "runtime=onnxruntime",
        f"input={trained['images']}",
        f"hydra.run.dir={tmp_path / 'wrong'}",
    )
    assert r.returncode == 2 and "config key 'checkpoint'" in r.stderr and ".onnx" in r.stderr


def test_calibrate_writes_a_tensor_file_export_can_use(trained, tmp_path, cli):
    r = cli(
        "calibrate",
        f"checkpoint={trained['ckpt']}",
        f"dataset.root={trained['root']}",
        "calibration.batches=2",
        "calibration.batch_size=3",
        f"hydra.run.dir={tmp_path / 'cal'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    data = np.load(tmp_path / "cal" / "calibration.npy", allow_pickle=False)
    assert data.shape == (6, 3, 64, 128) and data.dtype == np.float32 and 0 <= data.min() and data.max() <= 1
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 3, 32, 32), np.float32))
    r = cli(
        "export",
        f"checkpoint={trained['ckpt']}",
        f"dataset.root={trained['root']}",
        "export.data_type=int8",
        f"calibration.cal_data_file={bad}",
        f"hydra.run.dir={tmp_path / 'x'}",
    )
    assert r.returncode == 2 and f"{bad}: calibration tensors are float32 [2, 3, 32, 32]" in r.stderr


def test_benchmark_writes_a_table_json_and_chart(trained, tmp_path, cli):
    import torch

    r = cli(
        "benchmark",
        f"benchmark.models={{unpruned: {trained['ckpt']}}}",
        f"dataset.root={trained['root']}",
        "benchmark.batch_sizes=[1,2]",
        "benchmark.gpu_batch_sizes=[2,4]",
        "benchmark.repeats=2",
        "benchmark.video_streams=[1,3]",
        "benchmark.video_frames=5",
        f"hydra.run.dir={tmp_path / 'bench'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    rows = out["rows"]
    # on a GPU PyTorch also runs fp16 there, and the GPU batch sizes are added (those not there already)
    gpu = torch.cuda.is_available()
    runtimes = [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")] + [("torch", "fp16")] * gpu
    assert {(x["runtime"], x["precision"], x["batch"]) for x in rows} == {
        (rt, p, b) for rt, p in runtimes for b in ((1, 2, 4) if gpu else (1, 2))
    }
    assert out["device"] == (torch.cuda.get_device_name() if gpu else "cpu")
    for x in rows:
        # timings are only checked for being measured: comparing them belongs to the benchmark, not a test
        assert x["e2e_ms_p50"] > 0 and x["network_ms_p50"] > 0 and 0 <= x["mAP"] <= 1
        assert x["e2e_images_per_s"] > 0 and x["e2e_serial_images_per_s"] > 0
        assert x["e2e_over_network"] == pytest.approx(x["e2e_images_per_s"] / x["network_images_per_s"])
        assert x["decode_ms_p50"] > 0 and x["preprocess_ms_p50"] > 0 and x["postprocess_ms_p50"] > 0
    assert all(
        x["speedup_e2e"] == pytest.approx(1.0) for x in rows if (x["runtime"], x["precision"]) == ("torch", "fp32")
    )
    assert out["workers"] == machine_cores()  # by default one per core
    # video streams: every variant at 1 and 3 concurrent streams, each stream's frames all processed
    streams = out["video_streams"]
    assert sorted((x["runtime"], x["precision"], x["streams"]) for x in streams) == sorted(
        (rt, p, n) for rt, p in runtimes for n in (1, 3)
    )
    for x in streams:
        assert x["fps_per_stream"] > 0 and x["frames_per_s"] == pytest.approx(x["streams"] * x["fps_per_stream"])
        assert x["sustains_30fps"] == (x["fps_per_stream"] >= 30)
    table = (tmp_path / "bench" / "streams.md").read_text()
    assert "| unpruned | onnxruntime | int8 | 3 |" in table and "30-FPS streams sustained" in table
    md = (tmp_path / "bench" / "benchmark.md").read_text()
    assert md.count("\n") == 2 + len(rows) and "| unpruned | onnxruntime | int8 | 2 |" in md
    assert "| decode / pre / post ms/img |" in md
    assert (tmp_path / "bench" / "benchmark.png").read_bytes()[:4] == b"\x89PNG"
    # benchmark.map=false leaves mAP unmeasured: null in the JSON, a dash in the table, no label on the chart
    from transferdet.bench.models import markdown, plot

    unmeasured = [{**x, "mAP": None} for x in rows]
    assert "| – |" in markdown(unmeasured) and "nan" not in markdown(unmeasured).lower()
    plot(unmeasured, tmp_path / "unmeasured.png")
    assert (tmp_path / "unmeasured.png").read_bytes()[:4] == b"\x89PNG"
    r = cli("benchmark", f"hydra.run.dir={tmp_path / 'none'}")
    assert r.returncode == 2 and "config key 'benchmark.models'" in r.stderr
    r = cli(
        "benchmark",
        f"benchmark.models={{unpruned: {trained['ckpt']}}}",
        f"dataset.root={trained['root']}",
        "benchmark.workers=0",
        f"hydra.run.dir={tmp_path / 'w'}",
    )
    assert r.returncode == 2 and "config key 'benchmark.workers'" in r.stderr
    # end to end from JPEG files (a camera's format; on a GPU decoded there): the same images, re-encoded
    r = cli(
        "benchmark",
        f"benchmark.models={{unpruned: {trained['ckpt']}}}",
        f"dataset.root={trained['root']}",
        "benchmark.image_encoding=jpeg",
        "benchmark.runtimes=[torch]",
        "benchmark.batch_sizes=[2]",
        "benchmark.gpu_batch_sizes=[]",
        "benchmark.repeats=1",
        f"hydra.run.dir={tmp_path / 'jpeg'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads((tmp_path / "jpeg" / "benchmark.json").read_text())
    assert out["image_encoding"] == "jpeg" and {x["batch"] for x in out["rows"]} == {2}
    assert all(abs(x["mAP"] - rows[0]["mAP"]) < 0.05 for x in out["rows"] if x["precision"] == "fp32")
    r = cli("benchmark", f"benchmark.models={{unpruned: {trained['ckpt']}}}", "benchmark.image_encoding=png")
    assert r.returncode == 2 and "benchmark.image_encoding" in r.stderr and "jpeg" in r.stderr


def test_prune_then_retrain_from_config_in_a_fresh_process(trained, tmp_path, cli):
    import torch

    r = cli("prune", f"checkpoint={trained['ckpt']}", "pruning.target_ratio=0.3", f"hydra.run.dir={tmp_path / 'prune'}")
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "prune" / "metrics.json").read_text())
    pruned_ckpt = tmp_path / "prune" / "pruned.ckpt"
    pruned = checkpoint.load(pruned_ckpt)
    assert metrics["prune/ratio"] <= 0.3 and metrics["prune/params_after"] == sum(
        p.numel() for p in pruned.network.parameters()
    )
    report = json.loads((tmp_path / "prune" / "pruning_report.json").read_text())
    assert report["layers"] and (tmp_path / "prune" / "pruning_report.md").read_text().startswith("# Pruning report")

    # retraining rebuilds the pruned architecture from config + channel plan; with no training step taken
    # its checkpoint must compute what the pruned model computes
    r = cli(
        "train",
        f"dataset.root={trained['root']}",
        "model=resnet10",
        f"model.pruned_checkpoint={pruned_ckpt}",
        *SIZE,
        "training.num_epochs=1",
        "+trainer.limit_train_batches=0",
        "training.num_workers=0",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={tmp_path / 'retrain'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    retrained = checkpoint.load(tmp_path / "retrain" / "checkpoints" / "last.ckpt")
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        a, b = pruned.network(x), retrained.network(x)
    assert (a[0] - b[0]).abs().max() < 1e-5 and (a[1] - b[1]).abs().max() < 1e-5

    # evaluate, infer and export take the pruned checkpoint like any other
    r = cli(
        "evaluate", f"checkpoint={pruned_ckpt}", f"dataset.root={trained['root']}", f"hydra.run.dir={tmp_path / 'ev'}"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli(
        "export",
        f"checkpoint={pruned_ckpt}",
        f"dataset.root={trained['root']}",
        "export.max_map_drop=100",
        f"hydra.run.dir={tmp_path / 'export'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "export" / "metrics.json").read_text())["parity/max_abs_diff_cov"] < 1e-4

    # a pruned checkpoint that lost its channel plan is refused with the reason
    # (written with a valid checksum: an edit behind the checksum's back is refused as such)
    obj = torch.load(pruned_ckpt, weights_only=True)
    obj["hyper_parameters"]["spec"]["channel_plan"] = None
    broken = tmp_path / "no_plan.ckpt"
    torch.save({**obj, checkpoint.CHECKSUM_KEY: checkpoint.checksum(obj)}, broken)
    r = cli("evaluate", f"checkpoint={broken}", f"dataset.root={trained['root']}", f"hydra.run.dir={tmp_path / 'x'}")
    assert r.returncode == 2 and "without its channel plan" in r.stderr and "Traceback" not in r.stderr
    torch.save(obj, edited := tmp_path / "edited.ckpt")
    r = cli("evaluate", f"checkpoint={edited}", f"dataset.root={trained['root']}", f"hydra.run.dir={tmp_path / 'y'}")
    assert r.returncode == 2 and "checksum mismatch" in r.stderr and "Traceback" not in r.stderr


def test_prune_sensitivity_sweep_draws_a_pareto_plot(trained, tmp_path, cli):
    r = cli(
        "prune",
        f"checkpoint={trained['ckpt']}",
        f"dataset.root={trained['root']}",
        "sweep=true",
        "sweep_ratios=[0.5,0.25]",
        f"hydra.run.dir={tmp_path / 'sweep'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [row["target_ratio"] for row in rows] == [1.0, 0.5, 0.25]
    assert rows[0]["params"] > rows[1]["params"] > rows[2]["params"] and rows[2]["ratio"] <= 0.25
    assert all(0 <= row["mAP"] <= 1 and row["latency_ms"] > 0 and row["flops"] > 0 for row in rows)
    assert (tmp_path / "sweep" / "sweep_pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 0.250 |" in (tmp_path / "sweep" / "sweep.md").read_text()


def test_test_time_flip_is_a_setting_of_a_trained_model(trained, tmp_path, cli):
    r = cli(
        "evaluate",
        f"checkpoint={trained['ckpt']}",
        f"dataset.root={trained['root']}",
        "postprocessing.test_time_flip=true",
        *LOW,
        f"hydra.run.dir={tmp_path / 'ev_flip'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert yaml.safe_load((tmp_path / "ev_flip" / "config.yaml").read_text())["postprocessing"]["test_time_flip"]
    assert 0 <= json.loads((tmp_path / "ev_flip" / "metrics.json").read_text())["mAP"] <= 1

    # the predictor's maps are the mean of the network's on the image and, mirrored back, on its mirror image
    flip = Predictor.load(trained["ckpt"], overrides=DetectorOverrides(postprocessing={"test_time_flip": True}))
    plain = Predictor.load(trained["ckpt"])
    assert not plain.spec.postprocessing.test_time_flip
    image = np.asarray(Image.open(next(iter(sorted(trained["images"].glob("*.png"))))).convert("RGB"))
    x = flip.preprocess(image)[None]
    cov, bbox = flip.outputs(x)
    cov_a, bbox_a = plain.outputs(x)
    cov_b, bbox_b = unflip(*plain.outputs(x.flip(-1)), STRIDE, 35.0, 0.5)
    assert np.allclose(cov, (cov_a + cov_b) / 2, atol=1e-6) and np.allclose(bbox, (bbox_a + bbox_b) / 2, atol=1e-5)
    assert not np.allclose(cov, cov_a, atol=1e-3)  # the mirror image's outputs did change them
