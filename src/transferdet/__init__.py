"""transferdet: transfer-learning toolkit for object detection (KITTI data, DetectNet_v2)."""

__version__ = "0.1.0"
