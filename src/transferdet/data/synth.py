"""Synthetic KITTI-format road scenes: the embedded default dataset.

A pinhole camera 1.65 m above a flat road (as in KITTI) looks at a horizon; objects stand on the road
plane, so their size in pixels shrinks with distance and their bottom edge rises towards the horizon.
Cars (side, rear and front views), pedestrians and cyclists get varied shapes, colours and sizes;
they are drawn far to near, so nearer objects and clutter (poles, signs, bins, bushes, car-coloured
boxes) occlude farther ones. The label fields are honest:

* ``truncated`` = fraction of the object's box outside the image (the box is clipped to the image);
* ``occluded`` = 0 / 1 / 2 for < 10 % / < 50 % / more of its drawn pixels hidden by nearer things;
* far-away groups of tiny cars are labelled ``dontcare``, as KITTI does;
* 3D fields (dimensions, location, rotation_y, alpha) follow from the camera model.

``style: textured`` (``synth=kitti``) narrows the gap to real frames: shaded and textured surfaces, shadows
under objects and across the road, house facades with windows or tree lines along the road, cars parked at
the kerb seen at an angle; ``object_height_median``, ``blur_max`` and ``jpeg_quality_min`` match object scales
and the camera's blur and compression. The flat default draws exactly as before these options existed.

Everything is drawn from one ``numpy`` generator seeded per image (``seed`` + image index), so a
dataset is reproducible image by image, whatever the number of images.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from transferdet.config.schema import SynthStyle
from transferdet.data.kitti import KittiObject, write_label_file

CAMERA_HEIGHT = 1.65  # metres above the road, as KITTI's
# real-world sizes (height, width, length) in metres
SIZES = {"car": (1.5, 1.7, 4.2), "pedestrian": (1.75, 0.6, 0.6), "cyclist": (1.75, 0.6, 1.8)}
PALETTE_CAR = [
    (180, 20, 20),
    (20, 40, 150),
    (230, 230, 230),
    (30, 30, 30),
    (120, 120, 125),
    (200, 170, 30),
    (20, 110, 50),
    (150, 150, 160),
    (90, 20, 90),
    (210, 100, 20),
]
PALETTE_FACADE = [(205, 185, 150), (228, 226, 218), (205, 125, 65), (150, 150, 148), (215, 195, 115), (165, 85, 60)]


@dataclass
class Placed:
    """An object or distractor placed in the scene, before drawing."""

    kind: str  # car / pedestrian / cyclist / clutter kind
    view: str  # side / rear / front
    x1: float
    y1: float
    x2: float
    y2: float
    depth: float
    lateral: float  # X in camera coordinates (m)
    size: tuple[float, float, float]


def _colour(rng: np.random.Generator, base: tuple[int, int, int], jitter: int = 25) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-jitter, jitter + 1), 0, 255)) for c in base)  # type: ignore[return-value]


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))  # type: ignore[return-value]


def _noise(rng: np.random.Generator, h: int, w: int, cell: float, amp: float) -> np.ndarray:
    """Smooth multiplicative texture around 1: normal values on a grid of ``cell``-pixel squares, upsampled."""
    grid = rng.normal(0.0, 1.0, (max(2, int(h / cell) + 2), max(2, int(w / cell) + 2))).astype(np.float32)
    return 1.0 + amp * np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BILINEAR))


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Coarse blotches and fine grain, as on asphalt, walls and foliage: an ``h`` x ``w`` x 1 gain."""
    return (_noise(rng, h, w, max(h, w) / 8, 0.08) * _noise(rng, h, w, 2.5, 0.05))[..., None]


class _Shifted:
    """An ImageDraw whose shapes are moved ``dx`` pixels right: one face of an obliquely seen car."""

    def __init__(self, d, dx: float) -> None:
        self._d, self._dx = d, dx

    def __getattr__(self, name: str):
        draw = getattr(self._d, name)

        def call(xy, *args, **kwargs):
            if isinstance(xy[0], tuple):
                xy = [(x + self._dx, y) for x, y in xy]
            else:
                xy = [v + self._dx if i % 2 == 0 else v for i, v in enumerate(xy)]
            return draw(xy, *args, **kwargs)

        return call


class SceneRenderer:
    """Renders one scene of ``width`` x ``height`` pixels."""

    def __init__(self, width: int, height: int, rng: np.random.Generator, textured: bool = False) -> None:
        self.w, self.h, self.rng, self.textured = width, height, rng, textured
        self.focal = 0.58 * width  # KITTI: f ~ 721 px for 1242 px wide images
        self.horizon = height * rng.uniform(0.38, 0.5)
        self.cx = width / 2 + rng.uniform(-0.05, 0.05) * width  # vanishing point

    # --------------------------------------------------------------- geometry
    def depth_for_height(self, pixels: float, real: float) -> float:
        """The distance at which an object ``real`` metres tall is ``pixels`` pixels tall."""
        return self.focal * real / pixels

    def place(self, kind: str, view: str, size: tuple[float, float, float], depth: float, lateral: float) -> Placed:
        """An object of ``size`` (h, w, l metres) at ``depth`` and ``lateral`` offset, projected."""
        h_real, w_real, l_real = size
        across = {"side": l_real, "oblique": w_real + 0.35 * l_real}.get(view, w_real)
        bottom = self.horizon + self.focal * CAMERA_HEIGHT / depth
        h_px = self.focal * h_real / depth
        w_px = self.focal * across / depth
        u = self.cx + self.focal * lateral / depth
        return Placed(kind, view, u - w_px / 2, bottom - h_px, u + w_px / 2, bottom, depth, lateral, size)

    # --------------------------------------------------------------- background
    def background(self) -> Image.Image:
        """Sky, horizon, road with lane marks and roadside, with lighting."""
        rng, w, h, hz = self.rng, self.w, self.h, int(self.horizon)
        img = np.empty((h, w, 3), np.float32)
        sky_top, sky_low = rng.uniform([40, 80, 150], [140, 170, 250]), rng.uniform([150, 170, 190], [230, 230, 245])
        t = np.linspace(0, 1, max(hz, 1))[:, None]
        img[:hz] = (sky_top * (1 - t) + sky_low * t)[:, None, :]
        ground = rng.uniform([60, 90, 40], [130, 150, 90])  # grass / verge
        img[hz:] = ground
        pil = Image.fromarray(img.clip(0, 255).astype(np.uint8))
        d = ImageDraw.Draw(pil)
        # skyline: buildings and tree line along the horizon
        x = -rng.uniform(0, 30)
        while x < w:
            bw = rng.uniform(0.03, 0.12) * w
            bh = rng.uniform(0.02, 0.25) * h
            col = _colour(rng, (110, 110, 115), 50) if rng.random() < 0.6 else _colour(rng, (50, 90, 50), 30)
            d.rectangle([x, hz - bh, x + bw, hz], fill=col)
            x += bw
        # road: a trapezoid converging on the vanishing point, with lane markings
        half_bottom = rng.uniform(0.6, 1.2) * w
        road = _colour(rng, (95, 95, 100), 30)
        d.polygon(
            [(self.cx - 2, hz), (self.cx + 2, hz), (self.cx + half_bottom, h), (self.cx - half_bottom, h)], fill=road
        )
        for lane in (-1.0, 1.0):
            for k in range(12):
                z0, z1 = 4 + k * 6, 4 + k * 6 + 3
                pts = []
                for z, sign in ((z0, 1), (z1, 1), (z1, -1), (z0, -1)):
                    u = self.cx + self.focal * (lane * 1.8 + sign * 0.08) / z
                    pts.append((u, self.horizon + self.focal * CAMERA_HEIGHT / z))
                d.polygon(pts, fill=(225, 225, 210))
        if self.textured:
            self._roadside(d, road_half=half_bottom * CAMERA_HEIGHT / max(h - hz, 1))
            arr = np.asarray(pil, np.float32) * _texture(rng, h, w)
            pil = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
        return pil

    # --------------------------------------------------------------- textured style: the world along the road
    def _project(self, lateral: float, up: float, depth: float) -> tuple[float, float]:
        """Image position of a point ``lateral`` m right, ``up`` m above the road, ``depth`` m ahead."""
        return self.cx + self.focal * lateral / depth, self.horizon + self.focal * (CAMERA_HEIGHT - up) / depth

    def _quad(self, d, lateral: float, up0: float, up1: float, z0: float, z1: float, fill) -> None:
        """A vertical rectangle in the plane ``lateral`` m to the side, from depth z0 to z1, up0 to up1 m high."""
        p = self._project
        d.polygon([p(lateral, up0, z0), p(lateral, up1, z0), p(lateral, up1, z1), p(lateral, up0, z1)], fill=fill)

    def _roadside(self, d, road_half: float) -> None:
        """Pavements, then house facades with windows or a line of trees on each side, and shadows on the road."""
        rng, p = self.rng, self._project
        for side in (-1.0, 1.0):
            kerb, walk = side * road_half, side * (road_half + rng.uniform(1.5, 3.5))
            pave = _colour(rng, (150, 148, 145), 25)
            d.polygon([p(kerb, 0, 1.5), p(walk, 0, 1.5), p(walk, 0, 300), p(kerb, 0, 300)], fill=pave)
            if rng.random() < 0.55:  # a street of houses
                z = 300.0
                while z > 1.5:  # far to near, so nearer houses cover farther ones at the skyline
                    z0 = max(z - rng.uniform(6, 16), 1.5)
                    top = rng.uniform(5, 14)
                    self._quad(d, walk, 0, top, z0, z, _colour(rng, PALETTE_FACADE[rng.integers(6)], 20))
                    self._quad(d, walk, top, top + 1.2, z0, z, _colour(rng, (120, 60, 45), 25))  # roof edge
                    glass = _colour(rng, (55, 65, 75), 20)
                    for floor in np.arange(1.0, top - 1.5, 3.0):
                        for wz in np.arange(z0 + 1.0, z - 1.0, 2.6):
                            self._quad(d, walk, floor, floor + 1.3, wz, wz + 1.1, glass)
                    z = z0
            else:  # trees and hedges
                for z in sorted(rng.uniform(2.5, 120, int(rng.integers(8, 30))), reverse=True):
                    x = walk + side * rng.uniform(0, 6)
                    tx, ty = p(x, 0, z)
                    trunk = self.focal * 0.25 / z
                    crown = self.focal * rng.uniform(1.2, 3.5) / z
                    top = ty - self.focal * rng.uniform(2.5, 6) / z
                    d.rectangle([tx - trunk / 2, top, tx + trunk / 2, ty], fill=_colour(rng, (70, 55, 40), 15))
                    d.ellipse([tx - crown, top - crown, tx + crown, top + crown], fill=_colour(rng, (45, 80, 35), 25))
        for _ in range(int(rng.integers(0, 4))):  # shadows of unseen trees and buildings across the road
            z0 = rng.uniform(3, 40)
            z1, x0 = z0 + rng.uniform(1, 8), rng.uniform(-12, 4)
            x1 = x0 + rng.uniform(3, 12)
            dark = _colour(rng, (55, 55, 60), 10)
            d.polygon([p(x0, 0, z0), p(x1, 0, z0), p(x1, 0, z1), p(x0, 0, z1)], fill=dark)

    # --------------------------------------------------------------- shapes, drawn in local box coordinates
    def draw_car(self, d: ImageDraw.ImageDraw, w: float, h: float, view: str, side_right: bool = False) -> None:
        """A car in a ``w`` x ``h`` box, seen from the side, the rear, the front, or (``oblique``) its rear or
        front and one side at once, the side towards the vanishing point (on the right: ``side_right``)."""
        rng = self.rng
        body = _colour(rng, PALETTE_CAR[rng.integers(len(PALETTE_CAR))])
        glass = _colour(rng, (60, 80, 100), 20)
        if view != "oblique":
            self._car_face(d, w, h, view, body, glass)
            return
        face = "rear" if rng.random() < 0.75 else "front"
        end = rng.uniform(0.4, 0.6) * w
        self._car_face(_Shifted(d, 0.0 if side_right else w - end), end, h, face, body, glass)
        self._car_flank(_Shifted(d, end if side_right else 0.0), w - end, h, body, glass, near_left=side_right)

    @staticmethod
    def _car_flank(d, w: float, h: float, body, glass, near_left: bool) -> None:
        """A car's side in perspective, joined to its rear or front at the near edge (left: ``near_left``):
        towards the far end the roof line stays near the horizon and the sill rises, so the side reads as the
        continuation of one car, not as a second car beside the first."""

        def at(t: float, f: float) -> tuple[float, float]:  # t: near (0) to far (1); f: roof (0) to ground (1)
            top, bottom = 0.02 * h + 0.06 * h * t, h - 1 - 0.18 * h * t
            return (t * w if near_left else w - t * w), top + f * (bottom - top)

        d.polygon([at(0, 0), at(0.85, 0.04), at(1, 0.42), at(0, 0.42)], fill=body)
        d.polygon([at(0.05, 0.08), at(0.8, 0.11), at(0.93, 0.4), at(0.05, 0.4)], fill=glass)
        d.line([at(0.48, 0.08), at(0.5, 0.4)], fill=body, width=max(1, int(0.04 * w)))
        d.polygon([at(0, 0.38), at(1, 0.38), at(1, 0.84), at(0, 0.84)], fill=body)
        for t in (0.18, 0.82):
            (cx, bottom), (_, top) = at(t, 1), at(t, 0)
            r = 0.17 * (bottom - top)
            d.ellipse([cx - 0.8 * r, bottom - 2 * r, cx + 0.8 * r, bottom], fill=(20, 20, 20))
            d.ellipse([cx - 0.4 * r, bottom - 1.5 * r, cx + 0.4 * r, bottom - 0.5 * r], fill=(150, 150, 150))

    def _car_face(self, d, w: float, h: float, view: str, body, glass) -> None:
        tyre = (20, 20, 20)
        if view == "side":
            r = 0.2 * h
            d.polygon([(0.22 * w, 0), (0.72 * w, 0), (0.88 * w, 0.42 * h), (0.1 * w, 0.42 * h)], fill=body)
            d.polygon([(0.27 * w, 0.07 * h), (0.68 * w, 0.07 * h), (0.8 * w, 0.4 * h), (0.18 * w, 0.4 * h)], fill=glass)
            d.rounded_rectangle([0, 0.38 * h, w - 1, h - r], radius=max(1, 0.1 * h), fill=body)
            for cx in (0.2 * w, 0.8 * w):
                d.ellipse([cx - r, h - 2 * r - 1, cx + r, h - 1], fill=tyre)
                d.ellipse([cx - r / 2, h - 1.5 * r - 1, cx + r / 2, h - 0.5 * r - 1], fill=(150, 150, 150))
        else:
            d.polygon([(0.15 * w, 0), (0.85 * w, 0), (w - 1, 0.4 * h), (0, 0.4 * h)], fill=body)
            d.polygon([(0.2 * w, 0.06 * h), (0.8 * w, 0.06 * h), (0.9 * w, 0.36 * h), (0.1 * w, 0.36 * h)], fill=glass)
            d.rectangle([0, 0.38 * h, w - 1, 0.85 * h], fill=body)
            d.rectangle([0.05 * w, 0.85 * h, 0.25 * w, h - 1], fill=tyre)
            d.rectangle([0.75 * w, 0.85 * h, 0.95 * w, h - 1], fill=tyre)
            lamp = (220, 30, 30) if view == "rear" else (250, 240, 190)
            d.rectangle([0.04 * w, 0.45 * h, 0.2 * w, 0.58 * h], fill=lamp)
            d.rectangle([0.8 * w, 0.45 * h, 0.96 * w, 0.58 * h], fill=lamp)
            d.rectangle([0.38 * w, 0.62 * h, 0.62 * w, 0.74 * h], fill=(235, 235, 235))

    def _person(self, d: ImageDraw.ImageDraw, w: float, h: float, top: float, bottom: float, legs: bool) -> None:
        rng = self.rng
        skin = _colour(rng, (200, 160, 130), 45)
        shirt, trousers = _random_colour(rng), _colour(rng, (50, 50, 70), 40)
        span = bottom - top
        head = 0.14 * span
        cx = w / 2
        d.ellipse([cx - head * 0.45, top, cx + head * 0.45, top + head], fill=skin)
        torso_w = min(w, 0.3 * span)
        d.rectangle([cx - torso_w / 2, top + head, cx + torso_w / 2, top + 0.55 * span], fill=shirt)
        arm = max(1.0, 0.06 * span)
        d.line([(cx - torso_w / 2, top + head * 1.2), (0, top + 0.5 * span)], fill=shirt, width=int(arm))
        d.line([(cx + torso_w / 2, top + head * 1.2), (w - 1, top + 0.5 * span)], fill=shirt, width=int(arm))
        if legs:
            stride = rng.uniform(0.1, 0.5) * w
            leg = max(1.0, 0.09 * span)
            d.line([(cx - 1, top + 0.55 * span), (cx - stride, bottom - 1)], fill=trousers, width=int(leg))
            d.line([(cx + 1, top + 0.55 * span), (cx + stride, bottom - 1)], fill=trousers, width=int(leg))

    def draw_pedestrian(self, d: ImageDraw.ImageDraw, w: float, h: float, view: str) -> None:
        """A walking or standing person in a ``w`` x ``h`` box."""
        self._person(d, w, h, 0, h, legs=True)

    def draw_cyclist(self, d: ImageDraw.ImageDraw, w: float, h: float, view: str) -> None:
        """A person on a bicycle in a ``w`` x ``h`` box."""
        rng = self.rng
        frame = _random_colour(rng)
        t = max(1, int(0.04 * h))
        if view == "side":
            r = min(0.22 * w, 0.2 * h)
            for cx in (r, w - 1 - r):
                d.ellipse([cx - r, h - 1 - 2 * r, cx + r, h - 1], outline=(25, 25, 25), width=t + 1)
            hub_y = h - 1 - r
            d.line(
                [
                    (r, hub_y),
                    (0.45 * w, hub_y - r),
                    (w - 1 - r, hub_y),
                    (0.6 * w, hub_y - 1.3 * r),
                    (0.45 * w, hub_y - r),
                ],
                fill=frame,
                width=t,
            )
            self._person(d, w, h, 0, hub_y - 0.3 * r, legs=False)
            d.line([(0.45 * w, hub_y - r), (0.5 * w, hub_y)], fill=(40, 40, 60), width=max(1, int(0.08 * h)))
        else:
            d.rectangle([0.4 * w, 0.6 * h, 0.6 * w, h - 1], fill=(25, 25, 25))
            d.line([(0, 0.45 * h), (w - 1, 0.45 * h)], fill=frame, width=t)
            self._person(d, w, h, 0, 0.72 * h, legs=False)

    def draw_clutter(self, d: ImageDraw.ImageDraw, w: float, h: float, kind: str) -> None:
        """A distractor (pole, sign, bin, blob) that is not an object to detect."""
        rng = self.rng
        if kind == "pole":
            d.rectangle([0, 0, w - 1, h - 1], fill=_colour(rng, (120, 120, 120), 40))
        elif kind == "sign":
            pole = max(1.0, 0.1 * w)
            d.rectangle([w / 2 - pole / 2, 0.3 * h, w / 2 + pole / 2, h - 1], fill=(130, 130, 130))
            col = [(200, 30, 30), (30, 60, 180), (230, 200, 30)][rng.integers(3)]
            if rng.random() < 0.5:
                d.ellipse([0, 0, w - 1, 0.35 * h], fill=col)
            else:
                d.polygon([(w / 2, 0), (w - 1, 0.35 * h), (0, 0.35 * h)], fill=col)
        elif kind == "bush":
            d.ellipse([0, 0, w - 1, h - 1], fill=_colour(rng, (40, 100, 40), 30))
        else:  # "box": bins, crates and car-coloured blocks: hard negatives
            d.rectangle([0, 0, w - 1, h - 1], fill=_colour(rng, PALETTE_CAR[rng.integers(len(PALETTE_CAR))]))


CLUTTER = {  # kind -> (height m, width m)
    "pole": (4.0, 0.15),
    "sign": (2.6, 0.7),
    "bush": (1.2, 1.8),
    "box": (1.1, 1.3),
}


def _covered_fraction(box: Placed, nearer: list[Placed]) -> float:
    """Fraction of ``box`` covered by the union of ``nearer`` boxes (on an 8x8 sample grid)."""
    xs = np.linspace(box.x1, box.x2, 8)
    ys = np.linspace(box.y1, box.y2, 8)
    gx, gy = np.meshgrid(xs, ys)
    covered = np.zeros_like(gx, dtype=bool)
    for n in nearer:
        covered |= (gx >= n.x1) & (gx <= n.x2) & (gy >= n.y1) & (gy <= n.y2)
    return float(covered.mean())


def render_image(index: int, cfg) -> tuple[Image.Image, list[KittiObject]]:
    """One synthetic scene and its KITTI objects. ``cfg`` is a :class:`~transferdet.config.schema.SynthConfig`."""
    rng = np.random.default_rng([cfg.seed, index])
    textured = SynthStyle(cfg.style) is SynthStyle.textured
    sc = SceneRenderer(cfg.image_width, cfg.image_height, rng, textured)
    W, H = sc.w, sc.h
    max_px = (H - sc.horizon) * 1.15  # the nearest objects nearly fill the ground area

    classes = list(cfg.class_frequencies)
    p = np.array([cfg.class_frequencies[c] for c in classes], float)
    p /= p.sum()
    placed: list[Placed] = []
    for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
        cls = classes[rng.choice(len(classes), p=p)]
        size = tuple(s * rng.uniform(0.85, 1.15) for s in SIZES[cls])
        if cfg.object_height_median is None:
            pixels = cfg.min_object_height * (max_px / cfg.min_object_height) ** rng.uniform(0, 1) ** 0.6
        else:  # log-normal, as KITTI's box heights
            pixels = H * cfg.object_height_median * math.exp(rng.normal(0.0, cfg.object_height_spread))
            pixels = min(pixels, max_px)
        depth = sc.depth_for_height(max(pixels, cfg.min_object_height), size[0])
        if cls == "car" and textured and rng.random() < 0.5:  # parked at the kerb, seen at an angle
            view, lateral = "oblique", rng.choice([-1, 1]) * rng.uniform(3.0, 6.0)
        elif cls == "car":
            view = rng.choice(["side", "rear", "rear", "front"])
            lateral = rng.uniform(-9, 9)
        else:
            view = rng.choice(["side", "front"])
            lateral = rng.choice([-1, 1]) * rng.uniform(2.5, 9) if rng.random() < 0.7 else rng.uniform(-3, 3)
        placed.append(sc.place(cls, str(view), size, depth, lateral))
    # drop objects that nearer ones would hide almost entirely (they would be unlabelable slivers)
    placed.sort(key=lambda o: o.depth)
    kept: list[Placed] = []
    for o in placed:
        if _covered_fraction(o, kept) < 0.7:
            kept.append(o)
    clutter: list[Placed] = []
    for _ in range(int(rng.integers(0, cfg.num_distractors + 1))):
        kind = str(rng.choice(list(CLUTTER)))
        hgt, wid = CLUTTER[kind]
        depth = rng.uniform(4, 60)
        lateral = rng.choice([-1, 1]) * rng.uniform(3, 14)
        clutter.append(sc.place(kind, "front", (hgt, wid, wid), depth, lateral))

    img = sc.background()
    draw = ImageDraw.Draw(img)
    ignore: list[tuple[float, float, float, float]] = []
    if rng.random() < cfg.dontcare_probability:  # a far-away crowd of tiny cars: KITTI's DontCare
        u0 = rng.uniform(0.1, 0.8) * W
        xs, ys = [], []
        for _ in range(int(rng.integers(2, 6))):
            depth = sc.depth_for_height(rng.uniform(3, cfg.min_object_height * 0.8), 1.5)
            o = sc.place("car", "rear", SIZES["car"], depth, 0.0)
            shift = u0 + rng.uniform(-0.06, 0.06) * W - (o.x1 + o.x2) / 2
            box = [o.x1 + shift, o.y1, o.x2 + shift, o.y2]
            draw.rectangle(box, fill=_colour(rng, PALETTE_CAR[rng.integers(len(PALETTE_CAR))]))
            xs += [box[0], box[2]]
            ys += [box[1], box[3]]
        ignore.append((max(min(xs) - 1, 0), max(min(ys) - 1, 0), min(max(xs) + 1, W), min(max(ys) + 1, H)))

    # draw far to near; the id map records which thing owns each pixel, for honest occlusion
    owner = np.full((H, W), -1, np.int32)
    scene = sorted(
        [(o.depth, i, o) for i, o in enumerate(kept)] + [(c.depth, len(kept) + j, c) for j, c in enumerate(clutter)],
        key=lambda t: -t[0],
    )
    drawn_pixels = np.zeros(len(kept), np.int64)
    for _, ident, o in scene:
        x0, y0 = int(math.floor(o.x1)), int(math.floor(o.y1))
        bw, bh = max(int(math.ceil(o.x2)) - x0, 2), max(int(math.ceil(o.y2)) - y0, 2)
        layer = Image.new("RGB", (bw, bh))
        mask = Image.new("L", (bw, bh), 0)
        d = _LayerDraw(ImageDraw.Draw(layer), ImageDraw.Draw(mask))
        if o.kind == "car":
            sc.draw_car(d, bw, bh, o.view, side_right=o.lateral < 0)
        elif o.kind == "pedestrian":
            sc.draw_pedestrian(d, bw, bh, o.view)
        elif o.kind == "cyclist":
            sc.draw_cyclist(d, bw, bh, o.view)
        else:
            sc.draw_clutter(d, bw, bh, o.kind)
        if textured:
            _shadow(img, o, rng)
            shaded = np.asarray(layer, np.float32) * np.linspace(1.15, 0.7, bh)[:, None, None]  # lit from above
            layer = Image.fromarray((shaded * _texture(rng, bh, bw)).clip(0, 255).astype(np.uint8))
        img.paste(layer, (x0, y0), mask)
        m = np.asarray(mask) > 0
        # the part of the layer that falls inside the image
        ys0, xs0 = max(0, -y0), max(0, -x0)
        ys1, xs1 = min(bh, H - y0), min(bw, W - x0)
        if ys1 <= ys0 or xs1 <= xs0:
            continue
        sub = m[ys0:ys1, xs0:xs1]
        owner[y0 + ys0 : y0 + ys1, x0 + xs0 : x0 + xs1][sub] = ident
        if ident < len(kept):
            drawn_pixels[ident] = int(sub.sum())

    visible = np.bincount(owner[owner >= 0].ravel(), minlength=len(kept) + len(clutter))[: len(kept)]
    objects: list[KittiObject] = []
    for i, o in enumerate(kept):
        full = (o.x2 - o.x1) * (o.y2 - o.y1)
        cx1, cy1, cx2, cy2 = max(o.x1, 0), max(o.y1, 0), min(o.x2, W), min(o.y2, H)
        if cx2 - cx1 < 2 or cy2 - cy1 < 2 or drawn_pixels[i] == 0:
            continue
        truncated = 1.0 - (cx2 - cx1) * (cy2 - cy1) / full
        hidden = 1.0 - visible[i] / drawn_pixels[i]
        if truncated > 0.75 or hidden > 0.9:
            continue
        occluded = 0 if hidden < 0.1 else 1 if hidden < 0.5 else 2
        ry = {
            "side": math.pi * (rng.random() < 0.5),
            "rear": -math.pi / 2,
            "front": math.pi / 2,
            "oblique": -math.pi / 2 + math.copysign(0.6, o.lateral),
        }[o.view]
        ry = (ry + rng.normal(0, 0.05) + math.pi) % (2 * math.pi) - math.pi
        alpha = (ry - math.atan2(o.lateral, o.depth) + math.pi) % (2 * math.pi) - math.pi
        objects.append(
            KittiObject(
                cls=o.kind,
                x1=cx1,
                y1=cy1,
                x2=cx2,
                y2=cy2,
                truncated=round(truncated, 2),
                occluded=occluded,
                alpha=alpha,
                dimensions=o.size,
                location=(o.lateral, CAMERA_HEIGHT, o.depth),
                rotation_y=ry,
            )
        )
    objects += [KittiObject("dontcare", *box, truncated=-1, occluded=-1, alpha=-10) for box in ignore]

    # lighting and sensor noise
    arr = np.asarray(img, np.float32) / 255.0
    gain = rng.uniform(0.6, 1.25) * rng.normal(1.0, 0.04, 3)
    shade = np.linspace(rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0), W)[None, :, None]
    arr = arr * gain * shade + rng.normal(0.0, cfg.noise_stddev, arr.shape)
    img = Image.fromarray((arr.clip(0, 1) * 255 + 0.5).astype(np.uint8))
    if cfg.blur_max > 0:  # focus and motion: the camera's, not the renderer's sharp edges
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, cfg.blur_max))))
    if cfg.jpeg_quality_min < 100:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(cfg.jpeg_quality_min, 101)))
        img = Image.open(buf).convert("RGB")
    return img, objects


def _shadow(img: Image.Image, o: Placed, rng: np.random.Generator) -> None:
    """Darken the road under ``o``: a flat ellipse around its bottom edge."""
    w, h = o.x2 - o.x1, o.y2 - o.y1
    box = [o.x1 - 0.05 * w, o.y2 - 0.08 * h, o.x2 + 0.08 * w, o.y2 + 0.05 * h]
    x0, y0 = int(math.floor(box[0])), int(math.floor(box[1]))
    size = (max(int(math.ceil(box[2])) - x0, 2), max(int(math.ceil(box[3])) - y0, 2))
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse([0, 0, size[0] - 1, size[1] - 1], fill=int(255 * rng.uniform(0.35, 0.65)))
    img.paste(Image.new("RGB", size, 0), (x0, y0), mask)


class _LayerDraw:
    """Draws every shape twice: in colour on the layer, and in white on the layer's mask."""

    def __init__(self, colour: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw) -> None:
        self._colour, self._mask = colour, mask

    def __getattr__(self, name: str):
        paint, stencil = getattr(self._colour, name), getattr(self._mask, name)

        def call(*args, **kwargs):
            paint(*args, **kwargs)
            stencil(*args, **{k: (255 if k in ("fill", "outline") and v is not None else v) for k, v in kwargs.items()})

        return call


def generate(
    cfg, root: str | Path, image_dir_name: str = "image_2", label_dir_name: str = "label_2", progress: bool = True
) -> dict[str, int]:
    """Write ``cfg.num_images`` scenes under ``root``; returns object counts per class."""
    root = Path(root)
    img_dir, lbl_dir = root / image_dir_name, root / label_dir_name
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for i in tqdm(range(cfg.num_images), desc="synth", unit="img", disable=not progress or None):
        img, objects = render_image(i, cfg)
        name = f"{i:06d}"
        # stored uncompressed: the sensor noise leaves zlib little to take (110 of 148 kB at 384x128), and
        # inflating is most of a PNG's decode, on every training epoch and every streamed image
        img.save(img_dir / f"{name}.png", compress_level=0)
        write_label_file(lbl_dir / f"{name}.txt", objects)
        for o in objects:
            counts[o.cls] = counts.get(o.cls, 0) + 1
    return counts
