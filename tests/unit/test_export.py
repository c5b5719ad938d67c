"""Export pieces: folding the input normalisation, ONNX parity, INT8 QDQ, TensorRT cache, DeepStream config."""

from __future__ import annotations

import configparser
import math
import struct

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from transferdet.bench.int8_weights import ExactBackend
from transferdet.config.schema import (
    ClusteringConfig,
    PostprocessingClassConfig,
    PostprocessingConfig,
)
from transferdet.errors import ConfigError, DataError
from transferdet.export.deepstream import write_deepstream
from transferdet.export.onnx_export import INPUT_NAME, OUTPUT_NAMES, deployable, export_onnx
from transferdet.export.quantize import quantize_int8
from transferdet.export.tensorrt_cache import (
    calibrated_ranges,
    header_version,
    network_tensors,
    read_cache,
    write_cache,
)
from transferdet.inference.backends import OnnxRuntimeBackend
from transferdet.inference.tensorrt import build_engine, onnx_data_type, tensorrt_unavailable
from transferdet.models import build_detector

H, W = 64, 128


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_detector(3, 10, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)).eval()
    with torch.no_grad():  # non-trivial BN statistics and heads, as after training
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
        m.output_cov.bias.fill_(0.0)
    return m


@pytest.fixture(scope="module")
def onnx_fp32(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model_fp32.onnx", H, W)


def test_folded_normalisation_is_exact_at_the_borders_too(model):
    x = torch.rand(2, 3, H, W)
    with torch.no_grad():
        a, b = model(x), deployable(model)(x)
    assert (a[0] - b[0]).abs().max() < 1e-5 and (a[1] - b[1]).abs().max() < 1e-4


def test_onnx_contract_and_fp32_parity(model, onnx_fp32):
    graph = onnx.load(str(onnx_fp32)).graph
    assert [i.name for i in graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    session = ort.InferenceSession(str(onnx_fp32), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = torch.rand(n, 3, H, W)
        cov, bbox = session.run(None, {INPUT_NAME: x.numpy()})
        with torch.no_grad():
            ref = model(x)
        assert np.abs(cov - ref[0].numpy()).max() < 1e-4 and np.abs(bbox - ref[1].numpy()).max() < 1e-3


@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_int8_qdq_model_runs_and_its_ranges_make_a_valid_tensorrt_cache(onnx_fp32, tmp_path, activations):
    images = np.random.default_rng(0).random((16, 3, H, W), dtype=np.float32)
    int8 = quantize_int8(onnx_fp32, tmp_path / "model_int8.onnx", images, "minmax", 8, activations, "qdq")
    graph = onnx.load(str(int8)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    zero_points = [
        inits[n.input[2]]
        for n in graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and len(n.input) > 2
    ]
    assert zero_points and {z.dtype for z in zero_points} == {np.dtype(activations)}
    if activations == "int8":  # symmetric: TensorRT explicit quantization
        assert all(int(z) == 0 for z in zero_points)
    cov, bbox = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: images[:2]})
    assert cov.shape == (2, 3, 4, 8) and np.isfinite(cov).all() and np.isfinite(bbox).all()
    assert int8.stat().st_size < 0.4 * onnx_fp32.stat().st_size


def test_calibration_cache_covers_every_float_tensor_of_the_fp32_model(onnx_fp32, tmp_path):
    images = np.random.default_rng(0).random((16, 3, H, W), dtype=np.float32)
    ranges = calibrated_ranges(onnx_fp32, images, "minmax", 8)
    graph = onnx.load(str(onnx_fp32)).graph
    produced = {o for n in graph.node for o in n.output} | {INPUT_NAME}
    assert list(ranges) == network_tensors(onnx_fp32) and set(ranges) <= produced
    assert INPUT_NAME in ranges and all(n.output[0] in ranges for n in graph.node if n.op_type in ("Conv", "Relu"))
    assert ranges[INPUT_NAME] == pytest.approx(float(images.max()), rel=1e-6)
    cache = write_cache(tmp_path / "calibration.cache", ranges, "8.6.1")
    lines = cache.read_text().splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2" and len(lines) == len(ranges) + 1
    for line in lines[1:]:
        name, hexval = line.rsplit(": ", 1)
        scale = struct.unpack(">f", bytes.fromhex(hexval))[0]
        assert name in ranges and math.isfinite(scale) and scale > 0
        assert scale == pytest.approx(max(ranges[name], 1e-12) / 127, rel=1e-6)
    header, scales = read_cache(cache)
    assert header == lines[0] and scales.keys() == ranges.keys()


@pytest.mark.parametrize(
    ("version", "number"), [("8.6.1", 8601), ("8.5", 8500), ("10.3.0", 100300), ("10.13.0", 101300)]
)
def test_cache_header_is_tensorrts_version_number(version, number):
    assert header_version(version) == number


@pytest.mark.parametrize("version", ["11.0.0", "ten", "10", ""])
def test_cache_header_refuses_what_tensorrt_cannot_read(version):
    with pytest.raises(ConfigError, match="export.tensorrt_version"):
        header_version(version)


def test_uint8_model_is_operator_format_and_computes_what_the_qdq_model_does(onnx_fp32, tmp_path):
    """The default ONNX Runtime INT8 model: QLinearConv / QLinearAdd instead of QDQ pairs, same numbers."""
    images = np.random.default_rng(0).random((16, 3, H, W), dtype=np.float32)
    qop = quantize_int8(onnx_fp32, tmp_path / "qop.onnx", images, "minmax", 8, "uint8")
    qdq = quantize_int8(onnx_fp32, tmp_path / "qdq.onnx", images, "minmax", 8, "uint8", "qdq")
    ops = {n.op_type for n in onnx.load(str(qop)).graph.node}
    assert {"QLinearConv", "QLinearAdd"} <= ops and "Conv" not in ops and "Add" not in ops

    def run(m):
        return ort.InferenceSession(str(m), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: images[:4]})

    (cov_op, bbox_op), (cov_dq, bbox_dq) = run(qop), run(qdq)
    cov_fp = run(onnx_fp32)[0]
    # both are 8-bit approximations of the fp32 model, the operator format no worse than QDQ
    err_op, err_dq = np.abs(cov_op - cov_fp).mean(), np.abs(cov_dq - cov_fp).mean()
    assert err_op < 0.02 and err_dq < 0.02 and err_op < 1.5 * err_dq, (err_op, err_dq)
    assert np.isfinite(bbox_op).all() and np.abs(bbox_op - bbox_dq).mean() < 0.1 * np.abs(bbox_dq).mean()
    with pytest.raises(ValueError, match="format"):
        quantize_int8(onnx_fp32, tmp_path / "x.onnx", images, "minmax", 8, "uint8", "qlinear")


def _conv_weights(path) -> list[np.ndarray]:
    """The int8 weight tensors of a quantized model's convolutions, one per layer."""
    return [
        onnx.numpy_helper.to_array(t)
        for t in onnx.load(str(path)).graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4
    ]


@pytest.mark.parametrize(("activations", "fmt"), [("uint8", "qoperator"), ("int8", "qdq")])
def test_int8_weights_take_7_bits_by_default_and_8_when_asked(onnx_fp32, tmp_path, activations, fmt):
    """7-bit weights keep CPUs without VNNI from saturating (quantize.py); every output channel still uses its
    whole range, so nothing is clipped."""
    images = np.random.default_rng(0).random((16, 3, H, W), dtype=np.float32)
    for bits, top in ((7, 64), (8, 127)):
        model = quantize_int8(onnx_fp32, tmp_path / f"w{bits}.onnx", images, "minmax", 8, activations, fmt, bits)
        weights = _conv_weights(model)
        assert len(weights) >= 10, len(weights)
        for w in weights:
            per_channel = np.abs(w.astype(np.int32)).reshape(len(w), -1).max(axis=1)
            assert (per_channel == top).all(), (bits, sorted(set(per_channel.tolist())))
    with pytest.raises(ValueError, match="weight bits"):
        quantize_int8(onnx_fp32, tmp_path / "x.onnx", images, "minmax", 8, activations, fmt, 6)


def test_onnxruntimes_int8_kernels_compute_the_qdq_models_own_arithmetic(onnx_fp32, tmp_path):
    """ONNX Runtime's fused int8 kernels against the QDQ model run operator by operator in float (its definition,
    which OpenCV and TensorRT compute): equal on any x86 CPU with 7-bit weights. With 8-bit weights a CPU without
    VNNI (AVX2) saturates; a VNNI CPU does not, so 8 bits is not asserted either way."""
    images = np.random.default_rng(1).random((8, 3, H, W), dtype=np.float32)
    model = quantize_int8(onnx_fp32, tmp_path / "qdq.onnx", images, "minmax", 8, "int8", "qdq")
    batch = torch.from_numpy(images[:4])
    fused, exact = OnnxRuntimeBackend(model)(batch), ExactBackend(model)(batch)
    assert np.abs(fused[0] - exact[0]).max() < 1e-3 and np.abs(fused[1] - exact[1]).max() < 1e-2


def test_deepstream_config_parses_and_names_existing_files(onnx_fp32, tmp_path):
    post = PostprocessingConfig(
        target_class_config={c: PostprocessingClassConfig(ClusteringConfig()) for c in ("car", "pedestrian")}
    )
    model = tmp_path / "model_fp32.onnx"
    model.write_bytes(onnx_fp32.read_bytes())
    config, labels, app = write_deepstream(
        tmp_path, onnx_file=model, classes=["car", "pedestrian"], width=W, height=H, data_type="fp32", post=post
    )
    ini = configparser.ConfigParser()
    ini.read(config)
    p = ini["property"]
    assert (tmp_path / p["onnx-file"]).is_file() and (tmp_path / p["labelfile-path"]).is_file()
    assert p["output-blob-names"].split(";") == list(OUTPUT_NAMES) and "uff-input-blob-name" not in p
    assert p["infer-dims"] == f"3;{H};{W}" and p["network-mode"] == "0" and p["num-detected-classes"] == "2"
    assert "model-engine-file" not in p and "int8-calib-file" not in p
    assert float(p["net-scale-factor"]) == pytest.approx(1 / 255)
    assert labels.read_text().split() == ["car", "pedestrian"]
    assert {"class-attrs-0", "class-attrs-1"} <= set(ini.sections())
    assert configparser.ConfigParser().read(app)


def test_deepstream_config_says_what_it_cannot_express(onnx_fp32, tmp_path, caplog):
    # nvinfer's DBSCAN does not fuse overlapping clusters: the export keeps the rest and warns once, naming the classes;
    # the same for the test-time flip
    fragments = ClusteringConfig(dbscan_merge_iou_threshold=0.7)
    post = PostprocessingConfig(
        target_class_config={"car": PostprocessingClassConfig(fragments), "cyclist": PostprocessingClassConfig()},
        test_time_flip=True,
    )
    with caplog.at_level("WARNING", logger="transferdet.export.deepstream"):
        write_deepstream(
            tmp_path, onnx_file=onnx_fp32, classes=["car", "cyclist"], width=W, height=H, data_type="fp32", post=post
        )
    warned = [r.getMessage() for r in caplog.records if "dbscan_merge_iou_threshold" in r.getMessage()]
    assert len(warned) == 1 and "(car 0.7)" in warned[0] and "cyclist" not in warned[0]
    # nor does it run the network on the mirrored frame
    assert sum("test_time_flip" in r.getMessage() for r in caplog.records) == 1


def test_onnx_data_type_tells_what_tensorrt_builds(onnx_fp32, tmp_path):
    images = np.random.default_rng(0).random((8, 3, H, W), dtype=np.float32)
    qdq = quantize_int8(onnx_fp32, tmp_path / "qdq.onnx", images, "minmax", 8, "int8", "qdq")
    qop = quantize_int8(onnx_fp32, tmp_path / "qop.onnx", images, "minmax", 8, "uint8", "qoperator")
    assert onnx_data_type(onnx_fp32) == "fp32" and onnx_data_type(qdq) == "int8"
    with pytest.raises(DataError, match="ONNX Runtime's own operators"):
        onnx_data_type(qop)


@pytest.mark.skipif(tensorrt_unavailable() is None, reason="TensorRT and a GPU are here")
def test_engine_build_says_what_is_missing(onnx_fp32, tmp_path):
    with pytest.raises(ConfigError) as err:
        build_engine(onnx_fp32, height=H, width=W, max_batch_size=4, out=tmp_path / "model.engine")
    assert str(err.value).count("\n") == 0 and "trtexec" in str(err.value)
    assert not (tmp_path / "model.engine").exists()
