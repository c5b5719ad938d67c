"""A trained detector as data: its spec (:mod:`.spec`), the files that hold it (:mod:`.checkpoint`, the one
owner of the checkpoint and ONNX-metadata layout) and starting weights for training (:mod:`.pretrained`)."""

from transferdet.detector.spec import DetectorSpec

__all__ = ["DetectorSpec"]
