"""What `export` hands to the deployment runtimes, checked against their formats: the TensorRT calibration
cache against the ONNX graph it ships with, the DeepStream configs against nvinfer's and deepstream-app's key
table, the Triton repository against Triton's model-config schema, the portable INT8 model in a second ONNX
consumer (OpenCV's DNN module), the INT8 mAP gate, and the TensorRT runtime (where TensorRT and a GPU exist)."""

from __future__ import annotations

import configparser
import importlib.util
import json
import math
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.conftest import run_cli
from transferdet.config.overrides import DetectorOverrides
from transferdet.config.schema import CalibrationConfig, DataType, ExportConfig
from transferdet.config.tasks import Runtime
from transferdet.data.images import load_rgb
from transferdet.detector import checkpoint
from transferdet.export.calibration import calibration_images
from transferdet.export.exporter import export_models
from transferdet.export.parity import ParityError, check_parity
from transferdet.inference.backends import OnnxRuntimeBackend
from transferdet.inference.evaluate import evaluate_predictor
from transferdet.inference.predictor import Predictor
from transferdet.inference.tensorrt import tensorrt_unavailable

KEYS = json.loads((Path(__file__).parents[1] / "data" / "deepstream_keys.json").read_text())
NO_TENSORRT = tensorrt_unavailable()


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "export"
    r = run_cli(
        "export",
        f"checkpoint={trained['ckpt']}",
        "export.data_type=int8",
        "export.triton=true",
        "calibration.batches=2",
        "calibration.batch_size=4",
        "export.max_map_drop=100",
        f"hydra.run.dir={out}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def read_ini(path: Path) -> configparser.ConfigParser:
    ini = configparser.ConfigParser(interpolation=None)
    ini.optionxform = str
    ini.read(path)
    return ini


def test_int8_export_writes_every_deployment_file(exported):
    names = {p.name for p in exported.iterdir()}
    assert {
        "model_fp32.onnx",
        "model_int8_onnxruntime.onnx",
        "model_int8_qdq.onnx",
        "calibration.cache",
        "nvinfer_config.txt",
        "labels.txt",
        "deepstream_app_config.txt",
        "parity.json",
        "triton",
    } <= names
    assert "model_int8.onnx" not in names  # the ambiguous name is gone
    parity = json.loads((exported / "parity.json").read_text())
    assert set(parity["mAP"]) == {"torch", "fp32", "int8", "int8_qdq"} and "int8_qdq" not in parity["gated"]
    # the ONNX Runtime model uses ONNX Runtime's own operators, the portable one standard operators only
    domains = {n.domain for n in onnx.load(str(exported / "model_int8_onnxruntime.onnx")).graph.node}
    assert "com.microsoft" in domains
    qdq = onnx.load(str(exported / "model_int8_qdq.onnx")).graph.node
    assert {n.domain for n in qdq} <= {"", "ai.onnx"} and {"QuantizeLinear", "DequantizeLinear"} <= {
        n.op_type for n in qdq
    }


def test_calibration_cache_has_one_entry_per_tensor_of_the_model_it_ships_with(exported):
    """TensorRT matches cache entries to the tensors of the parsed network by name: every key must be one of
    model_fp32.onnx's tensors, and every float tensor TensorRT quantizes (the input included) needs one."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(exported / "model_fp32.onnx")))
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    float_types = {
        v.name
        for v in (*graph.value_info, *graph.input, *graph.output)
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    activations = {i.name for i in graph.input if i.name not in initializers} | {
        o for n in graph.node for o in n.output
    }
    quantizable = {t for t in activations if t in float_types}
    lines = (exported / "calibration.cache").read_text().splitlines()
    assert lines[0] == "TRT-101300-EntropyCalibration2"  # export.tensorrt_version's default, 10.13.0
    entries = dict(line.rsplit(": ", 1) for line in lines[1:])
    assert len(entries) == len(lines) - 1  # no tensor twice
    assert set(entries) <= activations, set(entries) - activations
    assert quantizable <= set(entries), quantizable - set(entries)
    assert "input_1" in entries and {"output_cov/Sigmoid", "output_bbox/BiasAdd"} <= set(entries)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(n.output[0] in entries for n in convs)
    for name, hexval in entries.items():
        assert len(hexval) == 8, name
        scale = struct.unpack(">f", bytes.fromhex(hexval))[0]
        assert math.isfinite(scale) and scale > 0, (name, scale)
    # the input is RGB/255 in [0, 1]: its scale is amax / 127 with amax at most 1
    assert struct.unpack(">f", bytes.fromhex(entries["input_1"]))[0] <= 1 / 127 + 1e-9


def _check_keys(ini: configparser.ConfigParser, allowed: dict[str, list[str]], deprecated: set[str]) -> None:
    for group in ini.sections():
        kind = group.rstrip("0123456789") if group.startswith(("source", "sink")) else group
        kind = "class-attrs" if group.startswith("class-attrs-") else kind
        assert kind in allowed, f"[{group}] is not a group of the key table"
        for key in ini[group]:
            assert key in allowed[kind], f"[{group}] {key} is not in the key table"
            assert key not in deprecated, f"[{group}] {key} is deprecated"


def test_deepstream_configs_use_current_keys_and_name_existing_files(exported, trained):
    nv = read_ini(exported / "nvinfer_config.txt")
    table = KEYS["nvinfer"]
    _check_keys(nv, {"property": table["property"], "class-attrs": table["class-attrs"]}, set(table["deprecated"]))
    p = nv["property"]
    for key in ("onnx-file", "labelfile-path", "int8-calib-file"):
        assert (exported / p[key]).is_file(), key
    assert p["onnx-file"] == "model_fp32.onnx" and p["int8-calib-file"] == "calibration.cache"
    assert ("model-engine-file" in p) == (exported / "model.engine").is_file()
    for key, values in table["values"].items():
        if key in p:
            assert p[key] in values, (key, p[key])
    assert p["network-mode"] == "1" and p["network-type"] == "0" and p["cluster-mode"] == "1"  # INT8, DBSCAN
    assert p["output-blob-names"].split(";") == ["output_cov/Sigmoid", "output_bbox/BiasAdd"]
    spec = Predictor.load(exported / "model_fp32.onnx", Runtime.onnxruntime).spec
    assert p["infer-dims"] == f"3;{spec.height};{spec.width}" and int(p["num-detected-classes"]) == len(spec.classes)
    assert (exported / "labels.txt").read_text().split() == list(spec.classes)
    for k, cls in enumerate(spec.classes):  # per-class thresholds are ours
        cc = spec.postprocessing.target_class_config[cls].clustering_config
        attrs = nv[f"class-attrs-{k}"]
        assert float(attrs["pre-cluster-threshold"]) == pytest.approx(cc.coverage_threshold)
        assert float(attrs["post-cluster-threshold"]) == pytest.approx(cc.dbscan_confidence_threshold)
        assert float(attrs["eps"]) == pytest.approx(cc.dbscan_eps)

    app = read_ini(exported / "deepstream_app_config.txt")
    groups = {k: v for k, v in KEYS["deepstream_app"].items() if k != "values"}
    _check_keys(app, groups, set())
    assert {"application", "source0", "streammux", "primary-gie", "sink0"} <= set(app.sections())
    assert app["primary-gie"]["config-file"] == "nvinfer_config.txt" and app["primary-gie"]["enable"] == "1"
    assert (exported / app["primary-gie"]["config-file"]).is_file()
    assert app["source0"]["type"] in KEYS["deepstream_app"]["values"]["source.type"]
    assert app["sink0"]["type"] in KEYS["deepstream_app"]["values"]["sink.type"]
    assert app["source0"]["uri"].startswith("file:///")


def _model_config_pb2():
    """Triton's ModelConfig message (tritonclient's generated module), loaded without tritonclient's gRPC client."""
    found = importlib.util.find_spec("tritonclient")
    if found is None:
        pytest.fail("tritonclient (a test dependency: pip install -e '.[test]') is not installed")
    path = Path(next(iter(found.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_triton_repository_parses_against_tritons_model_config_schema(exported):
    from google.protobuf import text_format

    pb2 = _model_config_pb2()
    folder = exported / "triton" / "detectnet_v2"
    config = text_format.Parse((folder / "config.pbtxt").read_text(), pb2.ModelConfig())  # strict: unknown keys fail
    assert config.name == "detectnet_v2" and config.max_batch_size == 8
    engine = (exported / "model.engine").is_file()
    assert config.platform == ("tensorrt_plan" if engine else "onnxruntime_onnx")
    assert (folder / "1" / config.default_model_filename).is_file() and (folder / "1" / "model.onnx").is_file()
    # the repository's ONNX model is the portable INT8 one, and the config describes it
    assert (folder / "1" / "model.onnx").read_bytes() == (exported / "model_int8_qdq.onnx").read_bytes()
    spec = Predictor.load(exported / "model_fp32.onnx", Runtime.onnxruntime).spec
    grid = (spec.height // 16, spec.width // 16)
    assert [(i.name, list(i.dims), i.data_type) for i in config.input] == [
        ("input_1", [3, spec.height, spec.width], pb2.TYPE_FP32)
    ]
    n = len(spec.classes)
    assert [(o.name, list(o.dims)) for o in config.output] == [
        ("output_cov/Sigmoid", [n, *grid]),
        ("output_bbox/BiasAdd", [4 * n, *grid]),
    ]
    assert config.HasField("dynamic_batching")


def test_portable_int8_model_computes_the_same_in_opencv_as_in_onnxruntime(exported, trained):
    """A second ONNX consumer: the fp32 and the QDQ model give ONNX Runtime's outputs in OpenCV's DNN module
    (ONNX Runtime's own operator-format model does not: OpenCV computes something else)."""
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is a test dependency")
    spec = Predictor.load(exported / "model_fp32.onnx", Runtime.onnxruntime).spec
    predictor = Predictor(spec, OnnxRuntimeBackend(exported / "model_fp32.onnx"))
    images = sorted(Path(trained["images"]).iterdir())[:2]
    batch = torch.stack([predictor.preprocess(load_rgb(p)) for p in images]).numpy()

    def both(name: str) -> list[float]:
        ours = OnnxRuntimeBackend(exported / name)(torch.from_numpy(batch))
        net = cv2.dnn.readNetFromONNX(str(exported / name))
        net.setInput(batch)
        theirs = net.forward(["output_cov/Sigmoid", "output_bbox/BiasAdd"])
        return [float(np.abs(a - b).max()) for a, b in zip(ours, theirs)]

    fp32, qdq = both("model_fp32.onnx"), both("model_int8_qdq.onnx")
    assert fp32[0] < 1e-4 and fp32[1] < 1e-3, fp32
    # int8: a few output quantization steps at most (coverage in [0, 1])
    assert qdq[0] < 0.05, qdq


def _silence_coverage(model_path: Path) -> None:
    """Zero the scale of the INT8 model's final DequantizeLinear of the coverage output: a model that finds
    nothing (what a calibration gone wrong gives, made certain)."""
    model = onnx.load(str(model_path))
    node = next(n for n in model.graph.node if "output_cov/Sigmoid" in n.output)
    assert node.op_type == "DequantizeLinear"
    scale = next(t for t in model.graph.initializer if t.name == node.input[1])
    scale.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(onnx.numpy_helper.to_array(scale)), scale.name))
    onnx.save(model, str(model_path))


def test_int8_gate_fails_with_per_class_deltas_and_keeps_fp32_usable(trained, tmp_path):
    """An INT8 model that loses more than export.max_map_drop fails the parity check with the AP change of
    every class; parity.json and the fp32 model stay, and the fp32 model scores what PyTorch does. (The suite's
    3-epoch model finds boxes only roughly: it is scored at 1% overlap, where its mAP is > 0.)"""
    loaded = checkpoint.load(trained["ckpt"])
    spec = loaded.spec.with_overrides(
        DetectorOverrides(
            evaluation={"minimum_detection_ground_truth_overlap": dict.fromkeys(loaded.spec.classes, 0.01)}
        )
    )
    converted = trained["root"] / "converted"
    e, c = ExportConfig(data_type=DataType.int8, engine=False), CalibrationConfig(batches=2, batch_size=4)
    images = calibration_images(converted, spec.preprocessing, 8)
    exported = export_models(spec, loaded.network, tmp_path, e, c, images)
    _silence_coverage(exported.models["int8"])
    with pytest.raises(ParityError) as err:
        check_parity(spec, loaded.network, exported, converted, tmp_path, parity_images=4, max_map_drop=1.0)
    message = str(err.value)
    assert message.startswith("int8 loses") and "export.max_map_drop=1" in message and "int8_qdq" not in message
    parity = json.loads((tmp_path / "parity.json").read_text())
    assert parity["mAP"]["torch"] > 0.05 and parity["mAP"]["int8"] == 0
    for cls in spec.classes:
        delta = 100 * (parity["AP"]["int8"][cls] - parity["AP"]["torch"][cls])
        assert f"{cls} {delta:+.2f}" in message
    fp32 = Predictor(spec, OnnxRuntimeBackend(exported.models["fp32"]))
    assert evaluate_predictor(fp32, converted).result.mean_ap() == pytest.approx(parity["mAP"]["torch"], abs=0.005)


@pytest.mark.skipif(NO_TENSORRT is None, reason="TensorRT and a GPU are here: the runtime runs instead")
def test_tensorrt_runtime_without_tensorrt_is_one_clear_error(exported, tmp_path, cli):
    r = cli(
        "evaluate",
        f"checkpoint={exported / 'model_fp32.onnx'}",
        "runtime=tensorrt",
        f"hydra.run.dir={tmp_path / 'ev'}",
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "runtime" in r.stderr and ("TensorRT is not installed" in r.stderr or "no CUDA GPU" in r.stderr)
    assert len([line for line in r.stderr.splitlines() if line.strip()]) <= 3


@pytest.mark.gpu
@pytest.mark.skipif(NO_TENSORRT is not None, reason=str(NO_TENSORRT))
@pytest.mark.parametrize("model", ["model_fp32.onnx", "model_int8_qdq.onnx"])
def test_tensorrt_runtime_matches_onnxruntime(exported, model):
    trt_predictor = Predictor.load(exported / model, Runtime.tensorrt)
    ort_predictor = Predictor.load(exported / model, Runtime.onnxruntime)
    x = torch.rand(3, 3, trt_predictor.height, trt_predictor.width)
    a, b = trt_predictor.outputs(x), ort_predictor.outputs(x)
    tolerance = 1e-3 if model == "model_fp32.onnx" else 0.05
    assert all(float(np.abs(u - v).max()) < tolerance for u, v in zip(a, b))
