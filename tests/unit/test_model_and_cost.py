"""Model topology, pretrained loading, cost function, LR schedule, freezing."""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
import torchvision
from pytorch_lightning.plugins.precision import MixedPrecision

from tests.conftest import compose_task
from transferdet.config.schema import (
    BboxLoss,
    CostClassConfig,
    CostConfig,
    ModelConfig,
    RasterizerClassConfig,
    RasterizerConfig,
    RegularizerConfig,
    RegularizerType,
    SoftStartAnnealingScheduleConfig,
)
from transferdet.config.validate import typed
from transferdet.data.loader import Batch
from transferdet.detector import checkpoint
from transferdet.detector.pretrained import (
    OFFLINE_VARIABLE,
    imagenet_file,
    imagenet_url,
    load_pretrained,
    starting_weights,
)
from transferdet.errors import ConfigError, DataError
from transferdet.inference.backends import TorchBackend
from transferdet.losses.cost import MIN_SCALED_EXTENT, DetectNetCost, regularization
from transferdet.losses.rasterizer import Rasterizer
from transferdet.models import build_detector
from transferdet.training.module import TrainingDiverged
from transferdet.training.schedule import soft_start_annealing
from transferdet.training.setup import module_from_config, precision_plugins, training_spec

CLASSES = ["car", "pedestrian", "cyclist"]


@pytest.mark.parametrize("depth,params", [(10, 4.91), (18, 11.18), (34, 21.29), (50, 23.54)])
def test_output_grid_is_stride_16_and_sizes_match_torchvision(depth, params):
    m = build_detector(3, depth).eval()
    cov, bbox = m(torch.rand(1, 3, 384, 1248))
    assert cov.shape == (1, 3, 24, 78) and bbox.shape == (1, 12, 24, 78)
    assert 0 <= cov.min() and cov.max() <= 1
    assert sum(p.numel() for p in m.parameters()) / 1e6 == pytest.approx(params, abs=0.01)


def test_without_batch_norm_convolutions_have_biases():
    m = build_detector(3, 18, use_batch_norm=False)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    assert all(c.bias is not None for c in m.modules() if isinstance(c, torch.nn.Conv2d))


def test_torchvision_resnet18_state_dict_fills_every_backbone_tensor(tmp_path):
    reference = torchvision.models.resnet18()  # random init here; ImageNet weights on a user's machine
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = build_detector(3, 18)
    report = load_pretrained(model, path, CLASSES)
    backbone = {k for k in model.state_dict() if k.startswith("backbone.")}
    assert set(report.loaded) == backbone
    assert report.skipped == ["backbone.fc.bias", "backbone.fc.weight"] or sorted(report.skipped) == [
        "backbone.fc.bias",
        "backbone.fc.weight",
    ]
    for k, v in reference.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(model.state_dict()[f"backbone.{k}"], v)
    assert set(report.missing) == {"output_cov.weight", "output_cov.bias", "output_bbox.weight", "output_bbox.bias"}


def test_a_file_of_another_depth_is_refused_unless_strict_is_off(tmp_path):
    from transferdet.errors import DataError

    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    model = build_detector(3, 18)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # ResNet-34 has every tensor of ResNet-18 and more: name-and-shape matching alone would load it silently
    with pytest.raises(DataError, match=r"r34.pth: does not fit .* the model has no backbone.layer1.2.\* "):
        load_pretrained(model, path, CLASSES)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # nothing half-loaded
    report = load_pretrained(model, path, CLASSES, strict=False)
    assert "backbone.layer1.2.conv1.weight" in report.skipped and "backbone.conv1.weight" in report.loaded
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(DataError, match=r"ResNet-34\): the file has no \(or other shapes of\) backbone.layer1.2.\*"):
        load_pretrained(build_detector(3, 34), path, CLASSES)


def test_a_transferdet_model_of_another_depth_is_refused_naming_its_depth(tmp_path):
    from transferdet.errors import DataError

    cfg = compose_task("train", ["model=resnet10"])
    checkpoint.save(tmp_path / "r10.ckpt", training_spec(cfg), module_from_config(cfg).model)
    with pytest.raises(
        DataError, match=r"r10.ckpt: does not fit .*ResNet-18.*it is a ResNet-10 model: set model.num_layers=10"
    ):
        load_pretrained(build_detector(3, 18), tmp_path / "r10.ckpt", CLASSES)


def _cache_with(tmp_path, monkeypatch, depth: int, weights_of: int) -> Path:
    """A torch hub cache (TORCH_HOME) holding, under torchvision's file name for ResNet-``depth``'s ImageNet
    weights, a randomly initialised torchvision ResNet-``weights_of`` state dict; downloads off."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(OFFLINE_VARIABLE, "1")
    path = tmp_path / "torch" / "hub" / "checkpoints" / Path(urlparse(imagenet_url(depth)).path).name
    path.parent.mkdir(parents=True)
    torch.save(getattr(torchvision.models, f"resnet{weights_of}")().state_dict(), path)
    return path


def test_imagenet_weights_come_from_the_torch_hub_cache_key_for_key(tmp_path, monkeypatch):
    path = _cache_with(tmp_path, monkeypatch, 18, 18)
    assert starting_weights(ModelConfig(num_layers=18, pretrained="imagenet")) == path
    model = build_detector(3, 18)
    report = load_pretrained(model, imagenet_file(18), CLASSES)
    reference = torch.load(path)
    assert set(report.loaded) == {f"backbone.{k}" for k in reference if not k.startswith("fc.")}
    assert all(torch.equal(model.state_dict()[f"backbone.{k}"], v) for k, v in reference.items() if k[:3] != "fc.")


def test_imagenet_weights_of_the_wrong_depth_are_refused(tmp_path, monkeypatch):
    _cache_with(tmp_path, monkeypatch, 18, 34)  # a ResNet-34 file under ResNet-18's name
    with pytest.raises(DataError, match=r"resnet18-[0-9a-f]+\.pth: does not fit .* the model has no backbone.layer1.2"):
        load_pretrained(build_detector(3, 18), imagenet_file(18), CLASSES)


def test_imagenet_without_network_or_for_resnet10_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(OFFLINE_VARIABLE, "1")
    with pytest.raises(DataError) as err:
        imagenet_file(34)
    message = str(err.value)
    assert "resnet34-" in message and "download https://download.pytorch.org/models/resnet34-" in message
    assert not (tmp_path / "torch" / "hub" / "checkpoints").exists() or not any(
        (tmp_path / "torch" / "hub" / "checkpoints").iterdir()
    )
    with pytest.raises(ConfigError, match="ResNet-10 has no public ImageNet weights"):
        starting_weights(ModelConfig(num_layers=10, pretrained="imagenet"))
    assert starting_weights(ModelConfig(num_layers=10, pretrained_model_file="a.ckpt")) == Path("a.ckpt")
    assert starting_weights(ModelConfig(num_layers=18)) is None


def _targets(boxes, classes, batch=1, w=128, h=64):
    cfg = RasterizerConfig(target_class_config={c: RasterizerClassConfig() for c in CLASSES})
    return Rasterizer(CLASSES, cfg, width=w, height=h)(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(classes, dtype=torch.long),
        torch.zeros(len(classes), dtype=torch.long),
        batch,
    )


def _cost(**kw) -> DetectNetCost:
    return DetectNetCost(CLASSES, CostConfig(target_classes={c: CostClassConfig() for c in CLASSES}, **kw))


def test_image_without_objects_gives_zero_bbox_loss_and_finite_coverage_loss():
    t = _targets([], [])
    cov = torch.full((1, 3, 4, 8), 0.3)
    bbox = torch.randn(1, 12, 4, 8)
    total, costs = _cost()(cov, bbox, t)
    assert torch.isfinite(total) and costs[:, 0].gt(0).all()
    assert costs[:, 1].eq(0).all()


def test_coverage_loss_weights_foreground_and_background():
    t = _targets([(16, 16, 80, 48)], [0])
    perfect = _cost()(t.cov.clone().clamp(1e-6, 1 - 1e-6).expand(1, 3, 4, 8).clone(), t.bbox, t)[1]
    wrong = _cost()(1 - t.cov, t.bbox, t)[1]
    assert perfect[0, 0] < 0.01 < wrong[0, 0] and perfect[0, 1] == 0  # exact boxes: zero bbox loss


def test_scaled_l1_divides_each_edge_error_by_the_box_width_or_height():
    # one 64x32-pixel car: the same error of 0.1 bbox-scale units (35 px) on every edge of every cell
    t = _targets([(16, 16, 80, 48)], [0])
    cov = t.cov.clone()
    l1 = _cost()(cov, t.bbox + 0.1, t)[1][0, 1]
    scaled = _cost(bbox_loss=BboxLoss.scaled_l1)(cov, t.bbox + 0.1, t)[1][0, 1]
    assert l1 > 0
    # left/right errors over the width 64/35, top/bottom over the height 32/35
    assert scaled / l1 == pytest.approx((35 / 64 + 35 / 32) / 2, rel=1e-5)
    # a 4x4-pixel box is divided by the floor, not by its 0.11 units
    tiny = _targets([(40, 24, 44, 28)], [0])
    ratio = (
        _cost(bbox_loss=BboxLoss.scaled_l1)(tiny.cov, tiny.bbox + 0.1, tiny)[1][0, 1]
        / _cost()(tiny.cov, tiny.bbox + 0.1, tiny)[1][0, 1]
    )
    assert ratio == pytest.approx(1 / MIN_SCALED_EXTENT, rel=1e-5)
    # exact boxes still cost nothing
    assert _cost(bbox_loss=BboxLoss.scaled_l1)(cov, t.bbox, t)[1][0, 1] == 0


def test_distillation_cost_is_least_at_the_teacher_and_weighs_boxes_by_its_coverage():
    torch.manual_seed(0)
    teacher_cov, teacher_bbox = torch.rand(2, 3, 4, 8) * 0.98 + 0.01, torch.randn(2, 12, 4, 8)
    cost = _cost()
    cov = teacher_cov.clone().requires_grad_(True)
    bbox = teacher_bbox.clone().requires_grad_(True)
    at_teacher = cost.distillation(cov, bbox, teacher_cov, teacher_bbox)
    at_teacher.backward()
    # cross-entropy against soft targets is least where the student equals the teacher: zero gradient there
    assert cov.grad.abs().max() < 1e-3 and bbox.grad.abs().max() == 0
    assert cost.distillation((teacher_cov + 0.3).clamp(0, 1), teacher_bbox, teacher_cov, teacher_bbox) > at_teacher
    # a box error costs nothing where the teacher sees no object, and costs where it does
    off = teacher_bbox + 1.0
    assert cost.distillation(teacher_cov, off, torch.zeros_like(teacher_cov), teacher_bbox) == cost.distillation(
        teacher_cov, teacher_bbox, torch.zeros_like(teacher_cov), teacher_bbox
    )
    assert cost.distillation(teacher_cov, off, teacher_cov, teacher_bbox) > at_teacher


def test_autoweighting_follows_the_formula():
    cost = _cost()
    assert torch.allclose(cost.objective_weight, torch.tensor([[1 / 11, 10 / 11]] * 3))
    cost.epoch_cost_sum.copy_(torch.tensor([[2.0, 0.5]] * 3))
    cost.end_epoch()
    # (1/2) / (1/2 + 10/0.5) and (10/0.5) / (...), clamped to [1e-4, 0.9999]
    assert torch.allclose(cost.objective_weight[0], torch.tensor([0.5 / 20.5, 20 / 20.5]))
    assert cost.epoch_cost_sum.sum() == 0
    fixed = _cost(enable_autoweighting=False)
    fixed.epoch_cost_sum.fill_(1.0)
    fixed.end_epoch()
    assert torch.allclose(fixed.objective_weight[0], torch.tensor([1 / 11, 10 / 11]))


def test_regularizers():
    m = build_detector(3, 10)
    convs = [x.weight for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    l1 = regularization(m, RegularizerConfig(RegularizerType.L1, 1e-3))
    l2 = regularization(m, RegularizerConfig(RegularizerType.L2, 1e-3))
    assert l1.item() == pytest.approx(1e-3 * sum(w.abs().sum().item() for w in convs), rel=1e-5)
    assert l2.item() == pytest.approx(1e-3 * sum((w * w).sum().item() for w in convs), rel=1e-5)
    assert regularization(m, RegularizerConfig(RegularizerType.NO_REG, 1e-3)) == 0.0


@pytest.mark.parametrize("p,t", [(0.0, 0.0), (0.05, 0.5), (0.1, 1.0), (0.5, 1.0), (0.85, 0.5), (1.0, 0.0)])
def test_lr_schedule_matches_the_formula(p, t):
    cfg = SoftStartAnnealingScheduleConfig(
        min_learning_rate=5e-6, max_learning_rate=5e-4, soft_start=0.1, annealing=0.7
    )
    expected = math.exp(math.log(5e-6) + t * (math.log(5e-4) - math.log(5e-6)))
    assert soft_start_annealing(p, cfg) == pytest.approx(expected, rel=1e-12)


def test_freeze_blocks_leave_frozen_weights_bit_identical_after_a_step():
    cfg = compose_task("train", ["model=resnet10", "model.freeze_blocks=[0,1,2]", "model.freeze_bn=true"])
    module = module_from_config(cfg)
    module.train()
    frozen = {
        k: v.clone()
        for k, v in module.model.state_dict().items()
        if k.startswith(("backbone.conv1.", "backbone.layer1.", "backbone.layer2.")) and "conv" in k
    }
    running = module.model.backbone.bn1.running_mean.clone()
    trainable = module.model.backbone.layer4[0].conv1.weight.clone()
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    cov, bbox = module.model(torch.rand(2, 3, 128, 384))
    t = module.rasterizer(torch.tensor([[10.0, 10, 60, 60]]), torch.tensor([0]), torch.tensor([0]), 2)
    module.cost(cov, bbox, t)[0].backward()
    opt.step()
    assert frozen and all(torch.equal(module.model.state_dict()[k], v) for k, v in frozen.items())
    assert torch.equal(module.model.backbone.bn1.running_mean, running)  # freeze_bn
    assert not torch.equal(module.model.backbone.layer4[0].conv1.weight, trainable)


def test_non_finite_loss_stops_training_with_a_clear_message():
    module = module_from_config(compose_task("train", ["model=resnet10"]))
    images = torch.full((2, 3, 128, 384), float("nan"))
    batch = Batch(
        images,
        torch.tensor([[5.0, 5, 40, 40]]),
        torch.tensor([0]),
        torch.tensor([0]),
        torch.zeros(1),
        torch.zeros(1, dtype=torch.long),
        torch.arange(2),
    )
    with pytest.raises(TrainingDiverged, match="the loss became nan at epoch 1.*max_learning_rate"):
        module.training_step(batch, 0)


def test_training_precision_and_cost_scaling_map_onto_lightning():
    def plugins_of(overrides: list[str]):
        return precision_plugins(typed(compose_task("train", overrides), "training"), "cpu")

    assert plugins_of([])[0] == "32-true"
    assert plugins_of(["training.training_precision.backend_floatx=BFLOAT16"])[0] == "bf16-mixed"
    precision, plugins = plugins_of(
        [
            "training.training_precision.backend_floatx=FLOAT16",
            "training.cost_scaling.enabled=true",
            "training.cost_scaling.initial_exponent=10",
            "training.cost_scaling.increment=0.5",
            "training.cost_scaling.decrement=2",
        ]
    )
    (mixed,) = [p for p in plugins if isinstance(p, MixedPrecision)]
    scaler = mixed.scaler
    assert precision is None and mixed.precision == "16-mixed"
    assert scaler.get_scale() == 2.0**10 and scaler.get_growth_factor() == pytest.approx(2**0.5)
    assert scaler.get_backoff_factor() == pytest.approx(0.25) and scaler.get_growth_interval() == 1


def _with_batch_norm_statistics(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Running statistics and affine parameters far from the identity, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("depth", [10, 18, 50])
@pytest.mark.parametrize("pruned", [False, True])
def test_batch_norm_folding_keeps_the_outputs_and_removes_every_batch_norm(depth, pruned):
    from transferdet.config.schema import PruningConfig
    from transferdet.models.detectnet import fold_batch_norm
    from transferdet.pruning.pruner import prune

    model = _with_batch_norm_statistics(build_detector(3, depth), seed=depth)
    if pruned:
        prune(model, PruningConfig(pruning_threshold=0.3, min_num_filters=8), 64, 128)
    x = torch.rand(2, 3, 64, 128)
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is left as it was
    with torch.no_grad():
        for a, b in zip(model(x), folded(x)):  # float rounding only: 1e-5 of the outputs' scale
            assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


def test_cpu_backend_runs_the_folded_channels_last_network_with_the_models_outputs():
    module = module_from_config(compose_task("train", ["model=resnet10"]))
    _with_batch_norm_statistics(module.model)
    backend = TorchBackend(module.model)
    assert backend.device.type == "cpu"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backend.network.modules())
    assert backend.network.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, module.height, module.width)
    cov, bbox = backend(x)
    with torch.no_grad():
        ref = module.model(x)
    for got, want in zip((cov, bbox), ref):
        assert got.shape == tuple(want.shape) and got.flags.c_contiguous
        assert float(np.abs(got - want.numpy()).max()) <= 1e-5 * float(want.abs().max())


def test_loading_a_checkpoint_leaves_the_random_stream_where_it_was(tmp_path):
    """Training seeds, then loads the pruned model it retrains: the load must not change the augmentations drawn
    after it (the default pipeline's retrained mAP depends on it)."""
    cfg = compose_task("train", ["model=resnet10"])
    checkpoint.save(tmp_path / "model.ckpt", training_spec(cfg), module_from_config(cfg).model)
    torch.manual_seed(0)
    expected = torch.rand(8)
    torch.manual_seed(0)
    checkpoint.load(tmp_path / "model.ckpt")
    assert torch.equal(torch.rand(8), expected)
