"""Structured channel pruning with TLT's criterion on Torch-Pruning's dependency graph (SPEC section 9).

Torch-Pruning finds the groups of coupled channels (every convolution feeding one residual add, with
their BN layers and the consumers' input channels) and performs the surgery; the choice of channels
is TLT's:

* per convolution, stat_f = L2 norm of filter f, normalised by ``max`` (stat / max) or ``L2``
  (stat / ||stat|| * n_filters);
* within a coupled group the members' stats merge by ``equalization_criterion`` (union = max,
  intersection = min, arithmetic or geometric mean) and one index set is imposed on all of them;
* keep filters with stat > ``pruning_threshold``, at least ``min_num_filters``, the count rounded **up**
  to a multiple of ``pruning_granularity``: the highest-stat ones, in their original order.

The heads and ``excluded_layers`` keep every filter (a group with an excluded member is left whole).
The model really shrinks: tensors are sliced, not masked.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from transferdet.config.schema import EqualizationCriterion, Normalizer, PruningConfig
from transferdet.errors import ConfigError
from transferdet.models.detectnet import DetectNetV2


def filter_norms(conv: nn.Conv2d) -> np.ndarray:
    """L2 norm of each output filter of a convolution."""
    return conv.weight.detach().flatten(1).norm(dim=1).double().numpy()


def normalize(stat: np.ndarray, normalizer: Normalizer) -> np.ndarray:
    """Filter statistics normalised by ``max`` or ``L2`` (TLT's -n)."""
    if normalizer is Normalizer.max:
        return stat / max(stat.max(), 1e-12)
    return stat / max(float(np.linalg.norm(stat)), 1e-12) * len(stat)


def equalize(stats: list[np.ndarray], criterion: EqualizationCriterion) -> np.ndarray:
    """One statistic per channel of a coupled group (TLT's -eq)."""
    a = np.stack(stats)
    if criterion is EqualizationCriterion.union:
        return a.max(0)
    if criterion is EqualizationCriterion.intersection:
        return a.min(0)
    if criterion is EqualizationCriterion.arithmetic_mean:
        return a.mean(0)
    return np.exp(np.log(np.maximum(a, 1e-12)).mean(0))


def kept_indices(stat: np.ndarray, cfg: PruningConfig) -> np.ndarray:
    """Which filters stay, by TLT's rule (sorted original indices)."""
    n = len(stat)
    count = max(int((stat > cfg.pruning_threshold).sum()), min(cfg.min_num_filters, n))
    count = min(-(-count // cfg.pruning_granularity) * cfg.pruning_granularity, n)
    return np.sort(np.argsort(-stat, kind="stable")[:count])


@dataclass
class LayerPlan:
    name: str
    total: int
    kept: int


@dataclass
class PruneReport:
    params_before: int
    params_after: int
    flops_before: int  # multiply and add counted separately
    flops_after: int
    layers: list[LayerPlan] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)  # convolutions pruned together

    @property
    def ratio(self) -> float:
        return self.params_after / self.params_before


def _graph(model: nn.Module, height: int, width: int) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, 3, height, width))


@contextlib.contextmanager
def _every_layer_traced(model: nn.Module) -> Iterator[None]:
    """Torch-Pruning traces the autograd graph, where frozen layers (``model.freeze_blocks``) do not appear:
    unfrozen while the graph is built and pruned, frozen again after (by name: pruning replaces the tensors)."""
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    model.requires_grad_(True)
    try:
        yield
    finally:
        params = dict(model.named_parameters())
        for name in frozen:
            params[name].requires_grad_(False)


def count(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """(FLOPs with multiply and add counted separately, parameters) of one image."""
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, height, width))
    return int(2 * macs), int(params)


def prune(model: DetectNetV2, cfg: PruningConfig, height: int, width: int) -> PruneReport:
    """Prune ``model`` in place; returns what changed. Frozen layers are pruned like the others."""
    with _every_layer_traced(model):
        return _prune(model, cfg, height, width)


def _prune(model: DetectNetV2, cfg: PruningConfig, height: int, width: int) -> PruneReport:
    model.eval()
    flops_before, params_before = count(model, height, width)
    names = {m: n for n, m in model.named_modules()}
    unknown = sorted(set(cfg.excluded_layers) - set(names.values()))
    if unknown:
        convs = [n for m, n in names.items() if isinstance(m, nn.Conv2d)]
        raise ConfigError(
            "pruning.excluded_layers", unknown, f"convolution names of the model, e.g. {', '.join(convs[:4])}"
        )
    excluded = {m for m, n in names.items() if n in cfg.excluded_layers}
    graph = _graph(model, height, width)
    heads = [model.output_cov, model.output_bbox]
    plans = []
    for group in graph.get_all_groups(ignored_layers=heads, root_module_types=[nn.Conv2d]):
        members = [
            dep.target.module
            for dep, _ in group
            if dep.handler == tp.prune_conv_out_channels and isinstance(dep.target.module, nn.Conv2d)
        ]
        members = list(dict.fromkeys(members))
        if not members or any(m in excluded or m in heads for m in members):
            continue
        stat = equalize([normalize(filter_norms(m), cfg.normalizer) for m in members], cfg.equalization_criterion)
        keep = kept_indices(stat, cfg)
        plans.append((members, keep, len(stat)))
    report = PruneReport(params_before, 0, flops_before, 0)
    for members, keep, total in plans:  # all choices made on the original weights first, then the surgery
        drop = sorted(set(range(total)) - set(keep.tolist()))
        if drop:
            graph.get_pruning_group(members[0], tp.prune_conv_out_channels, idxs=drop).prune()
        report.groups.append([names[m] for m in members])
        report.layers += [LayerPlan(names[m], total, len(keep)) for m in members]
    report.flops_after, report.params_after = count(model, height, width)
    report.layers.sort(key=lambda p: list(names.values()).index(p.name))
    return report


def prune_to_ratio(
    model: DetectNetV2, cfg: PruningConfig, height: int, width: int, iterations: int = 16
) -> tuple[PruneReport, float]:
    """Bisection on the threshold for the largest model with params ratio <= ``cfg.target_ratio``."""
    assert cfg.target_ratio is not None
    lo, hi = 0.0, 1.0
    while _ratio(model, cfg, hi, height, width) > cfg.target_ratio and hi < 1e6:
        lo, hi = hi, hi * 4  # normalised stats can exceed 1 with the L2 normalizer
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if _ratio(model, cfg, mid, height, width) > cfg.target_ratio:
            lo = mid
        else:
            hi = mid
    chosen = copy.copy(cfg)
    chosen.pruning_threshold = hi
    return prune(model, chosen, height, width), hi


def _ratio(model: DetectNetV2, cfg: PruningConfig, threshold: float, height: int, width: int) -> float:
    trial = copy.copy(cfg)
    trial.pruning_threshold = threshold
    return prune(copy.deepcopy(model), trial, height, width).ratio
