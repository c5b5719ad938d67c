"""DetectNet_v2: a ResNet backbone of torchvision's topology with output stride 16, and two 1x1 heads."""

from transferdet.models.detectnet import DetectNetV2, build_detector

__all__ = ["DetectNetV2", "build_detector"]
