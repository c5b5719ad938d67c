"""DetectNet_v2 cost function (SPEC section 5).

Per class k, with target t, prediction p (sigmoid output) and loss mask m:

* coverage: weighted binary cross-entropy, weight ``coverage_foreground_weight`` where t > 0.5 and
  1 - that weight elsewhere, times m, mean over cells;
* bbox: L1 |pred - target| times the rasterizer's bbox weight and m, mean over cells and coordinates;
  with ``bbox_loss: scaled_l1`` each edge's error is first divided by the target box's width (left, right)
  or height (top, bottom), so that a small object's edges count as much as IoU says they do;
* total = sum_k sum_obj (class_weight_k / sum class_weight) * w_obj,k * cost_obj,k.

Objective weights start at ``initial_weight`` normalised over the class's objectives; with
``enable_autoweighting`` they are updated at each epoch end from the epoch's mean costs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from transferdet.config.schema import BboxLoss, CostConfig, RegularizerConfig, RegularizerType
from transferdet.losses.rasterizer import Targets

OBJECTIVES = ("cov", "bbox")
BCE_EPSILON = 1e-5  # inside both logarithms, as TLT
# scaled_l1: the smallest width or height an error is divided by, in bbox-scale units (about 9 pixels at
# TLT's bbox scale 35): a degenerate box must not take over the loss
MIN_SCALED_EXTENT = 0.25


def _cross_entropy(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of probabilities ``p`` against (soft) targets, per element, epsilon as TLT."""
    return -(target * torch.log(p + BCE_EPSILON) + (1 - target) * torch.log(1 - p + BCE_EPSILON))


def _box_extents(target: torch.Tensor) -> torch.Tensor:
    """``[B, C, 4, H, W]`` L T R B targets (distances from the cell to the edges) -> each edge's box extent,
    width for L and R, height for T and B, at least ``MIN_SCALED_EXTENT``."""
    width = (target[:, :, 0] + target[:, :, 2]).clamp(min=MIN_SCALED_EXTENT)
    height = (target[:, :, 1] + target[:, :, 3]).clamp(min=MIN_SCALED_EXTENT)
    return torch.stack([width, height, width, height], dim=2)


class DetectNetCost(nn.Module):
    def __init__(self, classes: Sequence[str], cfg: CostConfig) -> None:
        super().__init__()
        self.classes = list(classes)
        per = [cfg.target_classes[c] for c in self.classes]
        class_w = torch.tensor([p.class_weight for p in per], dtype=torch.float32)
        self.register_buffer("class_weight", class_w / class_w.sum().clamp(min=1e-12))
        self.register_buffer("foreground_weight", torch.tensor([p.coverage_foreground_weight for p in per]))
        initial = torch.tensor([[p.objectives[o].initial_weight for o in OBJECTIVES] for p in per])  # [C, 2]
        self.register_buffer("objective_weight", initial / initial.sum(1, keepdim=True).clamp(min=1e-12))
        self.register_buffer(
            "weight_target", torch.tensor([[p.objectives[o].weight_target for o in OBJECTIVES] for p in per])
        )
        # sums of the epoch's per-batch mean costs, for autoweighting
        self.register_buffer("epoch_cost_sum", torch.zeros(len(per), len(OBJECTIVES)))
        self.autoweighting = cfg.enable_autoweighting
        self.min_weight, self.max_weight = cfg.min_objective_weight, cfg.max_objective_weight
        self.scaled_bbox = cfg.bbox_loss is BboxLoss.scaled_l1

    def forward(self, cov: torch.Tensor, bbox: torch.Tensor, t: Targets) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the total cost and the per-class, per-objective costs ``[C, 2]`` (cov, bbox)."""
        b, c, h, w = cov.shape
        p = cov.float().clamp(0.0, 1.0)
        fg = t.cov > 0.5
        wfg = self.foreground_weight.view(1, c, 1, 1)
        cell_weight = torch.where(fg, wfg, 1.0 - wfg)
        cov_cost = (cell_weight * _cross_entropy(p, t.cov) * t.mask).mean(dim=(0, 2, 3))  # [C]
        diff = (bbox.float() - t.bbox).abs().view(b, c, 4, h, w)
        if self.scaled_bbox:
            diff = diff / _box_extents(t.bbox.view(b, c, 4, h, w))
        bbox_cost = (diff * (t.bbox_weight * t.mask)[:, :, None]).mean(dim=(0, 2, 3, 4))  # [C]
        costs = torch.stack([cov_cost, bbox_cost], dim=1)  # [C, 2]
        if self.training:
            self.epoch_cost_sum += costs.detach()
        return self._weighted(costs), costs

    def _weighted(self, costs: torch.Tensor) -> torch.Tensor:
        """Per-class, per-objective costs ``[C, 2]`` -> the total, by class and objective weights."""
        return (self.class_weight[:, None] * self.objective_weight * costs).sum()

    def distillation(
        self, cov: torch.Tensor, bbox: torch.Tensor, teacher_cov: torch.Tensor, teacher_bbox: torch.Tensor
    ) -> torch.Tensor:
        """Cost of the outputs against a teacher's: coverage by cross-entropy against the teacher's coverage,
        boxes by L1 weighted by the teacher's coverage (where it sees an object), mean over cells; the classes
        and objectives weighted as in the DetectNet cost."""
        b, c, h, w = cov.shape
        p, t = cov.float().clamp(0.0, 1.0), teacher_cov.float().clamp(0.0, 1.0)
        cov_cost = _cross_entropy(p, t).mean(dim=(0, 2, 3))  # [C]
        diff = (bbox.float() - teacher_bbox.float()).abs().view(b, c, 4, h, w)
        bbox_cost = (diff * t[:, :, None]).mean(dim=(0, 2, 3, 4))  # [C]
        return self._weighted(torch.stack([cov_cost, bbox_cost], dim=1))

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Autoweighting: w <- clamp((target / mean_cost) / sum(target / mean_cost), min, max) per class."""
        if self.autoweighting and bool((self.epoch_cost_sum > 0).all()):
            ratio = self.weight_target / self.epoch_cost_sum
            new = ratio / ratio.sum(1, keepdim=True)
            self.objective_weight.copy_(new.clamp(self.min_weight, self.max_weight))
        self.epoch_cost_sum.zero_()


def regularization(model: nn.Module, cfg: RegularizerConfig) -> torch.Tensor | float:
    """L1 (w * sum |theta|) or L2 (w * sum theta^2) over the weights of convolutions (not BN)."""
    if cfg.type is RegularizerType.NO_REG or cfg.weight == 0:
        return 0.0
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad]
    if cfg.type is RegularizerType.L1:
        return cfg.weight * sum(w.abs().sum() for w in weights)
    return cfg.weight * sum((w * w).sum() for w in weights)
