"""KITTI data: label files and validation, the synthetic generator, the converted (indexed) format."""
