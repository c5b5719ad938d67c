"""From network outputs to boxes: coverage threshold, box decoding, DBSCAN / NMS / hybrid clustering."""

from transferdet.postprocess.postprocessor import Postprocessor, decode_boxes

__all__ = ["Postprocessor", "decode_boxes"]
