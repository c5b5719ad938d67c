"""Partitioning, the converted format, and reading it back by index."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from omegaconf import OmegaConf

from transferdet.config.schema import DatasetConfig, PartitionMode
from transferdet.data.convert import (
    fingerprint,
    partition_random,
    partition_sequence,
    save_npz_deterministic,
    write_converted,
)
from transferdet.data.converted import ConvertedDataset
from transferdet.data.kitti import read_label_file, scan_dataset
from transferdet.errors import DataError
from transferdet.utils.io import write_json_atomic

MAPPING = {"car": "car", "pedestrian": "pedestrian", "cyclist": "cyclist", "dontcare": "dontcare"}


def dataset_config(root, **kw) -> DatasetConfig:
    return DatasetConfig(root=str(root), **{"target_class_mapping": dict(MAPPING), **kw})


def test_random_partition_is_seeded_and_sized():
    ids = [f"{i:04d}" for i in range(103)]
    a, b = partition_random(ids, 20, seed=1), partition_random(ids, 20, seed=1)
    assert a.folds == b.folds and len(a.split_ids("val")) == 20 and len(a.split_ids("train")) == 83
    assert set(a.split_ids("val")).isdisjoint(a.split_ids("train"))
    assert partition_random(ids, 20, seed=2).split_ids("val") != a.split_ids("val")
    # not the first 20 by name (TLT's biased split)
    assert a.split_ids("val") != ids[:20]


def test_sequence_partition_keeps_sequences_whole(tmp_path):
    ids = [f"{i:02d}" for i in range(10)]
    seq = {"s1": ids[:5], "s2": ids[5:8], "s3": ids[8:]}
    path = tmp_path / "seq.json"
    path.write_text(json.dumps(seq))
    p = partition_sequence(ids, path, num_partitions=2, validation_fold=1)
    # largest first, round robin: s1 -> fold 0, s2 -> fold 1, s3 -> fold 0
    assert p.folds == [sorted(ids[:5] + ids[8:]), ids[5:8]] and p.split_ids("val") == ids[5:8]
    path.write_text(json.dumps({"s1": ids[:5]}))
    with pytest.raises(DataError, match="5 images are in no sequence"):
        partition_sequence(ids, path, 2, 0)


def test_npz_is_byte_deterministic(tmp_path):
    arrays = {"a": np.arange(5), "s": np.array(["x", "yy"])}
    save_npz_deterministic(tmp_path / "1.npz", arrays)
    save_npz_deterministic(tmp_path / "2.npz", arrays)
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    assert np.load(tmp_path / "1.npz")["s"].tolist() == ["x", "yy"]


def test_converted_samples_match_label_files(synth_root, tmp_path):
    d = dataset_config(synth_root, num_shards=3)
    records, warnings = scan_dataset(synth_root, progress=False)
    manifest = write_converted(tmp_path, records, warnings, d, progress=False)
    write_json_atomic(tmp_path / "manifest.json", manifest)
    conv = ConvertedDataset(tmp_path)
    assert conv.stale_reason(d) is None and conv.classes == ["car", "pedestrian", "cyclist"]
    seen = []
    for split in ("train", "val"):
        index = conv.split(split)
        assert len(index.shard_sizes) == 3
        for i in range(len(index)):
            s = index[i]
            seen.append(s.id)
            objs = read_label_file(synth_root / "label_2" / f"{s.id}.txt")
            assert s.image_path == synth_root.resolve() / "image_2" / f"{s.id}.png"
            expected = np.array([[o.x1, o.y1, o.x2, o.y2] for o in objs], np.float32).reshape(-1, 4)
            assert s.boxes.shape == expected.shape and np.allclose(s.boxes, expected, atol=1e-4)
            names = [conv.classes[c] if c >= 0 else "dontcare" for c in s.class_ids]
            assert names == [o.cls for o in objs]
            assert Counter(s.ignore_mask.tolist())[True] == sum(o.cls == "dontcare" for o in objs)
    assert sorted(seen) == sorted(r.id for r in records)  # every image exactly once
    with pytest.raises(IndexError):
        conv.split("val")[len(conv.split("val"))]


def test_fingerprint_follows_the_settings(tmp_path):
    a = dataset_config(tmp_path)
    assert fingerprint(a) == fingerprint(dataset_config(tmp_path))
    assert fingerprint(a) != fingerprint(dataset_config(tmp_path, val_split=30))
    b = dataset_config(tmp_path)
    b.target_class_mapping["van"] = "car"
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) != fingerprint(
        dataset_config(tmp_path, partition_mode=PartitionMode.sequence, kitti_sequence_to_frames_file="s.json")
    )


def test_tampered_shard_is_detected(synth_root, tmp_path):
    d = dataset_config(synth_root)
    records, warnings = scan_dataset(synth_root, progress=False)
    write_json_atomic(tmp_path / "manifest.json", write_converted(tmp_path, records, warnings, d, progress=False))
    shard = next((tmp_path / "shards").glob("train-*.npz"))
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match="differs from its manifest"):
        ConvertedDataset(tmp_path)


def test_typed_dataset_config_from_yaml_matches_schema():
    cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), {"root": "x", "target_class_mapping": MAPPING})
    assert OmegaConf.to_object(cfg).partition_mode is PartitionMode.random


def _copy_dataset(src, dst):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("converted"))
    return dst


def test_a_conversion_is_reused_only_while_it_holds_the_dataset_as_it_is(synth_root, tmp_path):
    """The class mapping in order, every source file (size and mtime, then content) and the folder it reads."""
    import os

    from transferdet.data.prepare import ensure_converted

    root = _copy_dataset(synth_root, tmp_path / "ds")
    d = dataset_config(root)
    out = ensure_converted(d)
    manifest = (out / "manifest.json").read_bytes()

    def reused() -> bool:
        return ensure_converted(d) == out and (out / "manifest.json").read_bytes() == manifest

    assert reused()
    label = root / "label_2" / "000003.txt"
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))  # touched, same content
    assert reused()
    # the same classes in another order: the class ids of the conversion would name other classes
    d = dataset_config(
        root,
        target_class_mapping={"cyclist": "cyclist", "car": "car", "pedestrian": "pedestrian", "dontcare": "dontcare"},
    )
    assert ConvertedDataset(out).stale_reason(d) == "it was made with other dataset settings"
    ensure_converted(d)
    assert ConvertedDataset(out).classes == ["cyclist", "car", "pedestrian"]
    manifest = (out / "manifest.json").read_bytes()
    # a label edited after the conversion
    label.write_text(label.read_text().replace("car", "cyclist", 1))
    assert "000003.txt changed since" in ConvertedDataset(out).stale_reason(d)
    ensure_converted(d)
    assert (out / "manifest.json").read_bytes() != manifest and ConvertedDataset(out).stale_reason(d) is None
    manifest = (out / "manifest.json").read_bytes()
    # an image added, and a manifest that names another folder
    (root / "image_2" / "extra.png").write_bytes((root / "image_2" / "000003.png").read_bytes())
    assert "images were added (extra)" in ConvertedDataset(out).stale_reason(d)
    (root / "image_2" / "extra.png").unlink()
    edited = json.loads(manifest)
    edited["source"]["root"] = str(synth_root.resolve())
    (out / "manifest.json").write_text(json.dumps(edited))
    assert ConvertedDataset(out).stale_reason(d).startswith("it was made from")


def test_convert_never_replaces_a_folder_it_did_not_write(synth_root, tmp_path):
    from transferdet.data.prepare import convert_dataset
    from transferdet.errors import ConfigError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    d = dataset_config(synth_root, converted_dir=str(mine))
    with pytest.raises(ConfigError, match="dataset.converted_dir"):
        convert_dataset(d)
    assert (mine / "thesis.tex").read_text() == "years of work"
    d = dataset_config(synth_root, converted_dir=str(tmp_path / "conv"))
    convert_dataset(d)
    convert_dataset(d)  # its own conversion it replaces
    assert ConvertedDataset(tmp_path / "conv").stale_reason(d) is None
