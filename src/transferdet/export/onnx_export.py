"""DetectNet_v2 to ONNX with TLT's contract (SPEC section 10).

Input ``input_1`` [N, 3, H, W] RGB / 255 (dynamic N), outputs ``output_cov/Sigmoid`` and
``output_bbox/BiasAdd``. The model's mean/std input normalisation is folded into the first
convolution, so the deployed network takes RGB / 255 like TLT's and DeepStream's ``net-scale-factor``
is simply 1/255.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from transferdet.models.detectnet import DetectNetV2
from transferdet.utils.io import atomic_path

INPUT_NAME = "input_1"
OUTPUT_NAMES = ("output_cov/Sigmoid", "output_bbox/BiasAdd")
OPSET = 17


def fold_input_normalization(model: DetectNetV2) -> DetectNetV2:
    """A copy whose first convolution absorbs (x - mean) / std (run it with ``normalize=False``).

    conv(W, b)((x - m) / s) = conv(W / s, b - sum_{c,k} W[:, c, k] * m_c / s_c)(x) exactly, where the
    padding of the original saw zeros of the *normalised* input; the folded network pads with zeros of
    the raw input instead, which differs only in the border pixels' receptive field. To keep it exact we
    pad the raw input with the mean instead (constant padding inside the wrapper).
    """
    folded = copy.deepcopy(model).eval()
    conv = folded.backbone.conv1
    mean, std = model.mean.view(-1), model.std.view(-1)
    with torch.no_grad():
        w = conv.weight / std.view(1, -1, 1, 1)
        b = conv.bias.clone() if conv.bias is not None else torch.zeros(conv.out_channels)
        b -= (conv.weight * (mean / std).view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
        conv.weight.copy_(w)
        conv.bias = nn.Parameter(b)
    return folded


class _Deployable(nn.Module):
    """Raw RGB/255 in; the padding of the first convolution is done here with the channel means, so the
    folded network computes exactly what the original did on normalised input."""

    def __init__(self, folded: DetectNetV2, mean: torch.Tensor) -> None:
        super().__init__()
        self.net = folded
        conv = folded.backbone.conv1
        self.pad = conv.padding
        conv.padding = (0, 0)
        self.register_buffer("fill", mean.view(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB/255 in, (coverage, bbox) out."""
        ph, pw = self.pad
        # pad with the mean: Sub, Pad, Add in ONNX
        x = nn.functional.pad(x - self.fill, (pw, pw, ph, ph)) + self.fill
        return self.net(x, normalize=False)


def deployable(model: DetectNetV2) -> nn.Module:
    """The network as deployed: normalisation folded, RGB/255 input, eval mode."""
    return _Deployable(fold_input_normalization(model), model.mean).eval()


def export_onnx(model: DetectNetV2, path: str | Path, height: int, width: int) -> Path:
    """Write the fp32 ONNX model (checked by the ONNX checker) under a temporary name, then rename."""
    import onnx

    net = deployable(model)
    dummy = torch.rand(1, 3, height, width)
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            net,
            (dummy,),
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            do_constant_folding=True,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"}, OUTPUT_NAMES[1]: {0: "batch"}},
        )
        onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
    return path
