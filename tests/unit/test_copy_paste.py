"""Copy-paste augmentation: which objects the bank holds, where they land, what the labels become."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from transferdet.config.schema import AugmentationConfig, CopyPasteConfig, DatasetConfig, PreprocessingConfig
from transferdet.data.augment import Augmenter
from transferdet.data.convert import write_converted
from transferdet.data.converted import ConvertedDataset
from transferdet.data.copy_paste import FEATHER, ObjectBank
from transferdet.data.images import load_rgb
from transferdet.data.kitti import scan_dataset
from transferdet.data.loader import DetectionDataset
from transferdet.utils.io import write_json_atomic

W, H = 200, 100
# per image: (class, truncation, occlusion, x1, y1, x2, y2); the eligible ones (defaults: whole, unoccluded,
# at least 10 pixels high) are marked
LABELS = [
    [("Car", 0.0, 0, 20, 30, 60, 60)],  # eligible
    [("Car", 0.0, 2, 120, 40, 170, 70), ("Pedestrian", 0.0, 0, 10, 10, 20, 40)],  # the pedestrian
    [("Car", 0.1, 0, 100, 20, 140, 32), ("DontCare", -1, -1, 0, 0, 50, 100)],  # the car (12 px high)
    [("Car", 0.5, 0, 60, 50, 100, 90), ("Car", 0.0, 0, 150, 10, 160, 15)],  # neither: truncated, 5 px high
]
ELIGIBLE = {(0, 20, 30, 60, 60), (1, 10, 10, 20, 40), (0, 100, 20, 140, 32)}


@pytest.fixture(scope="module")
def train_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("cp") / "ds"
    (root / "image_2").mkdir(parents=True)
    (root / "label_2").mkdir()
    rng = np.random.default_rng(0)
    for i, objects in enumerate(LABELS):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "image_2" / f"{i:06d}.png")
        lines = [f"{c} {t} {o} 0 {x1} {y1} {x2} {y2} 0 0 0 0 0 0 0" for c, t, o, x1, y1, x2, y2 in objects]
        (root / "label_2" / f"{i:06d}.txt").write_text("\n".join(lines) + "\n")
    mapping = {"car": "car", "pedestrian": "pedestrian", "dontcare": "dontcare"}
    d = DatasetConfig(root=str(root), target_class_mapping=mapping, val_split=0)
    out = root.parent / "converted"
    out.mkdir()
    records, warnings = scan_dataset(root, progress=False)
    write_json_atomic(out / "manifest.json", write_converted(out, records, warnings, d, progress=False))
    return ConvertedDataset(out).split("train")


def test_bank_holds_the_whole_objects_with_their_pixels(train_index):
    bank = ObjectBank(train_index, CopyPasteConfig(probability=1.0))
    assert {(o.class_id, *o.box.astype(int).tolist()) for o in bank.objects} == ELIGIBLE
    assert bank.num_images == 3
    for o in bank.objects:
        samples = [train_index[i] for i in range(len(train_index))]
        (source,) = [s for s in samples if (s.boxes == o.box).all(1).any()]
        image = load_rgb(source.image_path)
        x1, y1, x2, y2 = o.box.astype(int)
        # the cut: the box and FEATHER pixels around it where the frame has them
        assert o.origin == (max(x1 - FEATHER, 0), max(y1 - FEATHER, 0))
        ox, oy = o.origin
        assert o.pixels.shape == (min(y2 + FEATHER, H) - oy, min(x2 + FEATHER, W) - ox, 3)
        np.testing.assert_array_equal(o.pixels, image[oy : oy + o.pixels.shape[0], ox : ox + o.pixels.shape[1]])
        # opaque inside the box, fading in the margin
        inside = np.zeros(o.alpha.shape[:2], bool)
        inside[y1 - oy : y2 - oy, x1 - ox : x2 - ox] = True
        assert (o.alpha[inside] == 1).all() and ((o.alpha[~inside] > 0) & (o.alpha[~inside] < 1)).all()


def test_a_paste_lands_where_the_object_was_and_is_labelled(train_index):
    bank = ObjectBank(train_index, CopyPasteConfig(probability=1.0, max_objects=20))
    target = train_index[3]
    image = load_rgb(target.image_path)
    labels = {"class_ids": target.class_ids, "truncated": target.truncated, "occluded": target.occluded}
    before = image.copy()
    out, boxes, new = bank.paste(image, target.boxes, labels, np.random.default_rng(5))
    np.testing.assert_array_equal(image, before)  # the input is not changed
    n = len(target.boxes)
    assert len(boxes) > n and len(new["class_ids"]) == len(boxes) == len(new["truncated"]) == len(new["occluded"])
    np.testing.assert_array_equal(boxes[:n], target.boxes)
    originals = {tuple(o.box.astype(int).tolist()): o for o in bank.objects}
    for box, class_id in zip(boxes[n:], new["class_ids"][n:]):
        x1, y1, x2, y2 = box.astype(int)
        mirrored = (W - x2, y1, W - x1, y2)
        o = originals.get((x1, y1, x2, y2)) or originals[mirrored]
        assert class_id == o.class_id
        ox, oy = o.origin
        src = o.pixels[y1 - oy : y2 - oy, x1 - ox : x2 - ox] if (x1, y1, x2, y2) in originals else None
        if src is None:  # mirrored: the object's pixels reflected
            mx1 = mirrored[0]
            src = o.pixels[y1 - oy : y2 - oy, mx1 - ox : mx1 - ox + (x2 - x1)][:, ::-1]
        np.testing.assert_array_equal(out[y1:y2, x1:x2], src)
    # nothing pasted over a labelled box (object or ignore region) or over another paste
    for i, a in enumerate(boxes[n:]):
        for other in [*target.boxes, *boxes[n:][:i]]:
            assert min(a[2], other[2]) <= max(a[0], other[0]) or min(a[3], other[3]) <= max(a[1], other[1])
    again = bank.paste(image, target.boxes, labels, np.random.default_rng(5))
    np.testing.assert_array_equal(again[0], out)
    np.testing.assert_array_equal(again[1], boxes)


def test_the_dataset_pastes_only_with_the_probability_and_keeps_the_other_draws(train_index):
    aug = AugmentationConfig(preprocessing=PreprocessingConfig(output_image_width=W, output_image_height=H))
    plain = DetectionDataset(train_index, Augmenter(aug, train=True, seed=1))
    never = DetectionDataset(
        train_index, Augmenter(aug, train=True, seed=1), ObjectBank(train_index, CopyPasteConfig(probability=0.0))
    )
    always = DetectionDataset(
        train_index, Augmenter(aug, train=True, seed=1), ObjectBank(train_index, CopyPasteConfig(probability=1.0))
    )
    counts = []
    for i in range(len(train_index)):
        a, b, c = plain[i], never[i], always[i]
        assert torch_equal(a["image"], b["image"]) and torch_equal(a["boxes"], b["boxes"])
        # the same flip, zoom and shift with pastes: the original boxes come out where they did without them
        assert torch_equal(c["boxes"][: len(a["boxes"])], a["boxes"])
        counts.append(len(c["boxes"]) - len(a["boxes"]))
    assert sum(counts) > 0


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())
