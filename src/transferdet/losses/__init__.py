"""Ground-truth rasterizer (boxes -> coverage / bbox targets) and the DetectNet_v2 cost function."""
