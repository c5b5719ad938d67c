"""Structured pruning: real shrinking for every depth, equalisation of residual groups, TLT's rules."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from transferdet.config.schema import EqualizationCriterion, Normalizer, PruningConfig
from transferdet.export.onnx_export import export_onnx
from transferdet.models import build_detector
from transferdet.models.detectnet import apply_channel_plan, channel_plan
from transferdet.pruning.pruner import (
    equalize,
    kept_indices,
    normalize,
    prune,
    prune_to_ratio,
)

H, W = 64, 128


def trained_like(depth: int, seed: int = 0) -> nn.Module:
    """A model whose filters have spread-out norms, as after training with L1 regularisation."""
    torch.manual_seed(seed)
    m = build_detector(3, depth).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                mod.weight.mul_(torch.rand(mod.out_channels, 1, 1, 1) ** 3)
    return m


@pytest.mark.parametrize("depth", [10, 18, 34, 50])
@pytest.mark.parametrize("threshold", [0.05, 0.3])
def test_pruned_model_runs_exports_and_counts_right(depth, threshold, tmp_path):
    m = trained_like(depth)
    report = prune(m, PruningConfig(pruning_threshold=threshold), H, W)
    assert report.params_after == sum(p.numel() for p in m.parameters()) < report.params_before
    assert report.flops_after < report.flops_before
    cov, bbox = m(torch.rand(2, 3, H, W))
    assert cov.shape == (2, 3, 4, 8) and bbox.shape == (2, 12, 4, 8)
    path = export_onnx(m, tmp_path / "pruned.onnx", H, W)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input_1": np.zeros((1, 3, H, W), np.float32)}
    )
    assert out[0].shape == (1, 3, 4, 8)


def test_residual_groups_keep_one_index_set_for_every_criterion():
    coupled = ("backbone.layer2.0.bn2", "backbone.layer2.0.downsample.1", "backbone.layer2.1.bn2")
    sets = {}
    for criterion in EqualizationCriterion:
        m = trained_like(18, seed=1)
        with torch.no_grad():  # tag every BN channel with its original index: it survives the slicing
            for mod in m.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.running_mean.copy_(torch.arange(mod.num_features, dtype=torch.float32))
        prune(m, PruningConfig(pruning_threshold=0.2, equalization_criterion=criterion), H, W)
        modules = dict(m.named_modules())
        kept = [modules[name].running_mean.long().tolist() for name in coupled]
        assert kept[0] == kept[1] == kept[2] and len(kept[0]) < 128, criterion
        sets[criterion] = kept[0]
    assert sets[EqualizationCriterion.union] != sets[EqualizationCriterion.intersection]


def test_union_and_intersection_choose_different_sets():
    a = normalize(np.array([1.0, 0.05, 0.9, 0.05]), Normalizer.max)
    b = normalize(np.array([0.05, 1.0, 0.9, 0.05]), Normalizer.max)
    cfg = PruningConfig(pruning_threshold=0.5, min_num_filters=1, pruning_granularity=1)
    union = kept_indices(equalize([a, b], EqualizationCriterion.union), cfg)
    inter = kept_indices(equalize([a, b], EqualizationCriterion.intersection), cfg)
    assert union.tolist() == [0, 1, 2] and inter.tolist() == [2]
    assert equalize([a, b], EqualizationCriterion.arithmetic_mean)[2] == pytest.approx(0.9)
    assert equalize([np.array([4.0]), np.array([1.0])], EqualizationCriterion.geometric_mean)[0] == pytest.approx(2.0)


def test_equalised_indices_are_the_same_in_a_crafted_model():
    """Crafted: in layer1 of ResNet-10 the stem feeds the residual add; give the stem and layer1.0.conv2
    opposite filter norms so union keeps many and intersection few, on the whole group at once."""
    results = {}
    for criterion in (EqualizationCriterion.union, EqualizationCriterion.intersection):
        m = build_detector(3, 10).eval()
        with torch.no_grad():
            scale = torch.linspace(0.01, 1, 64)
            m.backbone.conv1.weight.mul_(0).add_(scale.view(-1, 1, 1, 1))
            m.backbone.layer1[0].conv2.weight.mul_(0).add_(scale.flip(0).view(-1, 1, 1, 1))
        cfg = PruningConfig(pruning_threshold=0.6, equalization_criterion=criterion, min_num_filters=8)
        prune(m, cfg, H, W)
        results[criterion] = (
            m.backbone.conv1.out_channels,
            m.backbone.layer1[0].conv2.out_channels,
            m.backbone.layer1[0].conv1.in_channels,
        )
        assert len(set(results[criterion])) == 1
    assert results[EqualizationCriterion.union][0] > results[EqualizationCriterion.intersection][0]


def test_granularity_min_filters_and_excluded_layers():
    m = trained_like(18)
    cfg = PruningConfig(
        pruning_threshold=0.9, pruning_granularity=8, min_num_filters=16, excluded_layers=["backbone.layer3.0.conv1"]
    )
    report = prune(m, cfg, H, W)
    for layer in report.layers:
        assert layer.kept % 8 == 0 or layer.kept == layer.total
        assert layer.kept >= min(16, layer.total)
    assert dict(m.named_modules())["backbone.layer3.0.conv1"].out_channels == 256
    assert "backbone.layer3.0.conv1" not in {x.name for x in report.layers}
    assert m.output_cov.out_channels == 3 and m.output_bbox.out_channels == 12


def test_kept_count_rounds_up_and_keeps_the_strongest():
    stat = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.05, 0.6, 0.3, 0.95, 0.15])
    keep = kept_indices(stat, PruningConfig(pruning_threshold=0.65, pruning_granularity=4, min_num_filters=2))
    assert keep.tolist() == [0, 2, 4, 8]  # 4 above 0.65 -> 4; strongest four, original order
    keep = kept_indices(stat, PruningConfig(pruning_threshold=0.85, pruning_granularity=4, min_num_filters=2))
    assert keep.tolist() == [0, 2, 4, 8]  # 2 above -> rounded up to 4


def test_target_ratio_finds_a_threshold_and_plan_replays_exactly():
    m = trained_like(18)
    report, threshold = prune_to_ratio(m, PruningConfig(target_ratio=0.15), H, W)
    assert 0.10 < report.ratio <= 0.15 and threshold > 0
    x = torch.rand(1, 3, H, W)
    rebuilt = apply_channel_plan(build_detector(3, 18), channel_plan(m))
    rebuilt.load_state_dict(m.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x)[0], m(x)[0])


@pytest.mark.parametrize("target_ratio", [None, 0.3])
def test_frozen_layers_are_pruned_like_the_others_and_stay_frozen(target_ratio):
    """model.freeze_blocks: Torch-Pruning traces the autograd graph, where frozen layers do not appear."""
    m = trained_like(10)
    for block in m.blocks()[:2]:  # the stem and layer1, as freeze_blocks: [0, 1]
        for module in block:
            module.requires_grad_(False)
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    cfg = PruningConfig(pruning_threshold=0.5, min_num_filters=8, target_ratio=target_ratio)
    report = prune_to_ratio(m, cfg, H, W)[0] if target_ratio else prune(m, cfg, H, W)
    kept = {p.name: p.kept for p in report.layers}
    assert kept["backbone.conv1"] < 64 and m.backbone.conv1.out_channels == kept["backbone.conv1"]
    assert {n for n, p in m.named_parameters() if not p.requires_grad} == frozen
    with torch.no_grad():
        cov, _ = m.eval()(torch.rand(1, 3, H, W))  # the pruned shapes agree everywhere
    assert cov.shape == (1, 3, H // 16, W // 16)
