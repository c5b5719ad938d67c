"""DetectNet_v2 model (SPEC section 3).

The backbone is torchvision's ResNet (so torchvision and timm ImageNet weights load key for key under
``backbone.``) with its last stage's stride set to 1: the output grid is H/16 x W/16. Two 1x1
convolutions on the last feature map give the coverage (sigmoid) and the boxes (linear), class-major:
bbox channel 4k + {0: L, 1: T, 2: R, 3: B}.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

STRIDE = 16
COVERAGE_PRIOR = 0.01
# depth -> (block, blocks per stage)
RESNETS = {
    10: (BasicBlock, [1, 1, 1, 1]),
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
}


class _NoNorm(nn.Identity):
    """Stands in for BatchNorm2d when ``use_batch_norm`` is false (accepts the channel count)."""

    def __init__(self, num_features: int) -> None:  # noqa: ARG002 - same signature as BatchNorm2d
        super().__init__()


def resnet_backbone(depth: int, use_batch_norm: bool = True) -> ResNet:
    """torchvision's ResNet without pooling/classifier use, last stage at stride 1 (total stride 16)."""
    block, layers = RESNETS[depth]
    net = ResNet(block, layers, norm_layer=nn.BatchNorm2d if use_batch_norm else _NoNorm)
    first = net.layer4[0]
    strided = first.conv2 if isinstance(first, Bottleneck) else first.conv1  # where torchvision puts the stride
    strided.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
    del net.fc, net.avgpool
    if not use_batch_norm:  # without BN the convolutions need their own bias
        for m in net.modules():
            if isinstance(m, nn.Conv2d) and m.bias is None:
                m.bias = nn.Parameter(torch.zeros(m.out_channels))
    return net


class DetectNetV2(nn.Module):
    """``forward(images [B, 3, H, W] RGB in [0, 1]) -> (cov [B, C, H/16, W/16], bbox [B, 4C, H/16, W/16])``."""

    def __init__(
        self,
        num_classes: int,
        depth: int = 18,
        *,
        use_batch_norm: bool = True,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        self.num_classes, self.depth, self.use_batch_norm = num_classes, depth, use_batch_norm
        self.backbone = resnet_backbone(depth, use_batch_norm)
        features = (
            self.backbone.layer4[-1].conv3.out_channels if depth >= 50 else self.backbone.layer4[-1].conv2.out_channels
        )
        self.output_cov = nn.Conv2d(features, num_classes, 1)
        self.output_bbox = nn.Conv2d(features, 4 * num_classes, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.reset_heads()

    def reset_heads(self) -> None:
        """Fresh heads: Xavier weights, zero bias, coverage starting at the foreground prior."""
        for head in (self.output_cov, self.output_bbox):
            nn.init.xavier_uniform_(head.weight)
            nn.init.zeros_(head.bias)
        # coverage starts at the prior of a rare foreground (sigmoid = 0.01) instead of 0.5: the first steps
        # then refine objects instead of first pushing every background cell down (RetinaNet's prior init)
        nn.init.constant_(self.output_cov.bias, math.log(COVERAGE_PRIOR / (1 - COVERAGE_PRIOR)))

    def features(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """The backbone's last feature map, ``[B, F, H/16, W/16]``."""
        b = self.backbone
        if normalize:
            x = (x - self.mean) / self.std
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))  # [B, F, H/16, W/16]

    def forward(self, x: torch.Tensor, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``normalize=False`` skips (x - mean) / std: for a model whose first convolution absorbed it."""
        f = self.features(x, normalize)
        return torch.sigmoid(self.output_cov(f)), self.output_bbox(f)

    def blocks(self) -> list[list[nn.Module]]:
        """Modules of each freezable block: 0 = stem, 1-4 = stages."""
        b = self.backbone
        return [[b.conv1, b.bn1], [b.layer1], [b.layer2], [b.layer3], [b.layer4]]


def build_detector(
    num_classes: int,
    depth: int,
    use_batch_norm: bool = True,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> DetectNetV2:
    """A DetectNet_v2 of ``num_classes`` on a ResNet of ``depth`` layers."""
    return DetectNetV2(num_classes, depth, use_batch_norm=use_batch_norm, mean=mean, std=std)


def fold_batch_norm(model: DetectNetV2) -> DetectNetV2:
    """An inference copy (eval mode) whose every BatchNorm is folded into the convolution before it.

    conv then BN is one convolution with weights ``W * g / sqrt(v + eps)`` and bias ``(b - m) * g /
    sqrt(v + eps) + beta``: the same outputs to float rounding, one operator fewer per layer (about a fifth
    of a pruned model's time on a CPU at batch 1, where its layers are thin). Pruned models fold alike.
    """
    folded = copy.deepcopy(model).eval()
    for parent in list(folded.modules()):  # the stem, every block (conv1/bn1 ...) and every downsample (0/1)
        names = [(f"conv{i}", f"bn{i}") for i in (1, 2, 3) if hasattr(parent, f"bn{i}")]
        if isinstance(parent, nn.Sequential) and len(parent) == 2:
            names.append(("0", "1"))
        for conv, bn in names:
            if isinstance(getattr(parent, conv), nn.Conv2d) and isinstance(getattr(parent, bn), nn.BatchNorm2d):
                setattr(parent, conv, fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, bn)))
                setattr(parent, bn, nn.Identity())
    return folded


def channel_plan(model: nn.Module) -> dict[str, list[int]]:
    """Shape of every convolution and BN (out, in) after pruning: enough to rebuild the architecture."""
    plan = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            plan[name] = [m.out_channels, m.in_channels]
        elif isinstance(m, nn.BatchNorm2d):
            plan[name] = [m.num_features]
    return plan


def apply_channel_plan(model: nn.Module, plan: dict[str, list[int]]) -> nn.Module:
    """Resize a freshly built model's convolutions and BN layers to a recorded plan (weights to be loaded)."""
    modules = dict(model.named_modules())
    missing = sorted(set(plan) - set(modules))
    if missing:
        raise KeyError(f"channel plan names layers the model does not have: {missing[:3]}")
    for name, shape in plan.items():
        m = modules[name]
        if isinstance(m, nn.Conv2d):
            out_c, in_c = shape
            m.out_channels, m.in_channels = out_c, in_c
            m.weight = nn.Parameter(torch.empty(out_c, in_c // m.groups, *m.kernel_size))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(out_c))
        elif isinstance(m, nn.BatchNorm2d):
            (n,) = shape
            m.num_features = n
            m.weight, m.bias = nn.Parameter(torch.empty(n)), nn.Parameter(torch.empty(n))
            m.register_buffer("running_mean", torch.zeros(n))
            m.register_buffer("running_var", torch.ones(n))
    return model
