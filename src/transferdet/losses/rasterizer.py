"""Ground-truth rasterizer (SPEC section 4): boxes -> coverage, bbox targets, loss weights and mask.

Vectorised and batched on the training device: coverage and dead-zone fractions of every box over every
cell are computed at once with 4x4 super-sampling; the order-dependent overlap rule (boxes of a class
drawn in ascending bottom edge, the closer object wins, dead zones clear cells) loops only over the
rank of a box within its (image, class), never over cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from transferdet.config.schema import RasterizerConfig

SUPERSAMPLE = 4
MIN_HALF_AXIS = 0.1  # grid cells


@dataclass
class Targets:
    cov: torch.Tensor  # [B, C, H, W] soft coverage in [0, 1]
    bbox: torch.Tensor  # [B, 4C, H, W] L T R B (class-major), in units of the bbox scale
    bbox_weight: torch.Tensor  # [B, C, H, W] coverage / max(4 csx csy, 1): weight of the bbox loss
    mask: torch.Tensor  # [B, C, H, W] 1, or 0 inside ignore regions


class Rasterizer:
    """Encodes boxes for a fixed class list, canvas and stride."""

    def __init__(
        self,
        classes: Sequence[str],
        cfg: RasterizerConfig,
        *,
        width: int,
        height: int,
        stride: int = 16,
        bbox_scale: float = 35.0,
        bbox_offset: float = 0.5,
    ) -> None:
        self.num_classes = len(classes)
        per = [cfg.target_class_config[c] for c in classes]
        self.center_x = torch.tensor([p.cov_center_x for p in per])
        self.center_y = torch.tensor([p.cov_center_y for p in per])
        self.radius_x = torch.tensor([p.cov_radius_x for p in per])
        self.radius_y = torch.tensor([p.cov_radius_y for p in per])
        self.min_radius = torch.tensor([p.bbox_min_radius for p in per])
        self.deadzone = cfg.deadzone_radius
        self.grid_w, self.grid_h = width // stride, height // stride
        self.stride, self.scale, self.offset = stride, bbox_scale, bbox_offset

    def _sample_points(self, n: int, device: torch.device) -> torch.Tensor:
        k = torch.arange(SUPERSAMPLE, device=device, dtype=torch.float32)
        return (torch.arange(n, device=device, dtype=torch.float32)[:, None] + (k + 0.5) / SUPERSAMPLE).reshape(-1)

    def _ellipse_fraction(self, cx, cy, rx, ry, px, py) -> torch.Tensor:
        """Fraction of each cell's sample points inside each ellipse: [M] params -> [M, H, W]."""
        dx = ((px[None, :] - cx[:, None]) / rx[:, None]) ** 2  # [M, W*4]
        dy = ((py[None, :] - cy[:, None]) / ry[:, None]) ** 2  # [M, H*4]
        inside = (dy[:, :, None] + dx[:, None, :]) < 1.0  # [M, H*4, W*4]
        m = inside.shape[0]
        return inside.view(m, self.grid_h, SUPERSAMPLE, self.grid_w, SUPERSAMPLE).float().mean(dim=(2, 4))

    def __call__(
        self, boxes: torch.Tensor, classes: torch.Tensor, image_index: torch.Tensor, batch_size: int
    ) -> Targets:
        """``boxes [M, 4]`` canvas pixels, ``classes [M]`` (-1 = ignore region), ``image_index [M]``."""
        device = boxes.device
        B, C, H, W = batch_size, self.num_classes, self.grid_h, self.grid_w
        maxcov = torch.zeros(B, C, H, W, device=device)
        weight = torch.zeros(B, C, H, W, device=device)
        bbox = torch.zeros(B, C, 4, H, W, device=device)
        px, py = self._sample_points(W, device), self._sample_points(H, device)

        obj = classes >= 0
        if obj.any():
            b_idx, k_idx = image_index[obj].long(), classes[obj].long()
            pix = boxes[obj].float()  # [M, 4] pixels
            g = pix / self.stride  # grid units
            w, h = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
            to = lambda t: t.to(device)[k_idx]  # noqa: E731 - per-class parameter of each box
            cx, cy = g[:, 0] + to(self.center_x) * w, g[:, 1] + to(self.center_y) * h
            csx = (to(self.radius_x) * w / 2).clamp(min=MIN_HALF_AXIS)
            csy = (to(self.radius_y) * h / 2).clamp(min=MIN_HALF_AXIS)
            m = to(self.min_radius)
            grow = torch.where(csx < m, m / csx, torch.ones_like(csx))  # keep the aspect ratio
            csx, csy = csx * grow, csy * grow
            grow = torch.where(csy < m, m / csy, torch.ones_like(csy))
            csx, csy = csx * grow, csy * grow
            d = self.deadzone
            dsx = torch.maximum((1 - d) * csx + d * w / 2, csx)
            dsy = torch.maximum((1 - d) * csy + d * h / 2, csy)
            cov_frac = self._ellipse_fraction(cx, cy, csx, csy, px, py)  # [M, H, W]
            dead_frac = self._ellipse_fraction(cx, cy, dsx, dsy, px, py)
            norm = 1.0 / torch.clamp(4 * csx * csy, min=1.0)  # [M]
            # bbox targets of each box at every cell anchor (the cell's corner pixel + offset)
            gx = torch.arange(W, device=device, dtype=torch.float32) * self.stride + self.offset
            gy = torch.arange(H, device=device, dtype=torch.float32) * self.stride + self.offset
            tl = (gx[None, None, :] - pix[:, 0, None, None]) / self.scale
            tt = (gy[None, :, None] - pix[:, 1, None, None]) / self.scale
            tr = (pix[:, 2, None, None] - gx[None, None, :]) / self.scale
            tb = (pix[:, 3, None, None] - gy[None, :, None]) / self.scale
            targets = torch.stack(torch.broadcast_tensors(tl, tt, tr, tb), dim=1)  # [M, 4, H, W]

            # rank of each box within its (image, class) by ascending bottom edge: the closer object wins
            group = b_idx * C + k_idx
            order = torch.argsort(pix[:, 3], stable=True)
            order = order[torch.argsort(group[order], stable=True)]
            sorted_group = group[order]
            first = torch.ones_like(sorted_group, dtype=torch.bool)
            first[1:] = sorted_group[1:] != sorted_group[:-1]
            start = torch.cummax(torch.where(first, torch.arange(len(order), device=device), 0), 0).values
            rank = torch.empty_like(order)
            rank[order] = torch.arange(len(order), device=device) - start
            for r in range(int(rank.max()) + 1):
                sel = torch.nonzero(rank == r).squeeze(1)
                bs, ks = b_idx[sel], k_idx[sel]
                cur = maxcov[bs, ks]
                a, c = dead_frac[sel], cov_frac[sel]
                clear = (a >= cur) & (a > 0)
                cur = torch.where(clear, torch.zeros_like(cur), cur)
                take = (c >= cur) & (c > 0)
                keep_old = ~(clear | take)
                maxcov[bs, ks] = torch.where(take, c, cur)
                weight[bs, ks] = torch.where(
                    take, c * norm[sel, None, None], torch.where(keep_old, weight[bs, ks], torch.zeros_like(cur))
                )
                bbox[bs, ks] = torch.where(
                    take[:, None],
                    targets[sel],
                    torch.where(keep_old[:, None], bbox[bs, ks], torch.zeros_like(targets[sel])),
                )

        mask = torch.ones(B, C, H, W, device=device)
        ign = ~obj
        if ign.any():
            g = boxes[ign].float() / self.stride
            inside = (
                (px[None, None, :] >= g[:, 0, None, None])
                & (px[None, None, :] <= g[:, 2, None, None])
                & (py[None, :, None] >= g[:, 1, None, None])
                & (py[None, :, None] <= g[:, 3, None, None])
            )
            covered = inside.view(-1, H, SUPERSAMPLE, W, SUPERSAMPLE).any(dim=4).any(dim=2)  # [Mi, H, W]
            hits = torch.zeros(B, H, W, device=device)
            hits.index_put_((image_index[ign].long(),), covered.float(), accumulate=True)
            # no loss inside ignore regions, except where an object of the class has coverage
            mask = torch.where((hits[:, None] > 0) & (maxcov <= 0), torch.zeros_like(mask), mask)
        return Targets(maxcov, bbox.view(B, 4 * C, H, W), weight, mask)
