"""What ``infer`` writes for images, folders and videos (TLT's layout):

* ``labels/<name>.txt``: one KITTI line per detection, confidence as the 16th field, boxes in the pixels of
  the original image (for a video: ``<video>_<frame:06d>.txt``);
* ``images_annotated/<name>.png`` with the boxes drawn, or ``<video>_annotated.mp4``.

Images and frames stream through the predictor in batches, several batches at a time (decoding and
clustering of one batch overlap the network of another): memory does not grow with the input.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from transferdet.data.images import load_rgb
from transferdet.data.kitti import KittiObject, write_label_file
from transferdet.errors import ConfigError, DataError
from transferdet.inference.predictor import Predictor
from transferdet.structures import Detections
from transferdet.utils.io import atomic_path, make_folder
from transferdet.visualize import draw_detections

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def kitti_objects(det: Detections, classes: list[str]) -> list[KittiObject]:
    """Detections as KITTI objects with the score as 16th field."""
    return [
        KittiObject(classes[int(k)], *map(float, box), score=float(s))
        for box, k, s in zip(det.boxes, det.class_ids, det.scores)
    ]


def image_inputs(path: Path) -> list[Path]:
    """The image files of ``path`` (a file, or a folder's images in name order)."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(path, f"no images here ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def output_names(files: list[Path]) -> dict[Path, str]:
    """The name of each input's outputs: its stem, or its file name with the dot made ``_`` where two inputs
    share a stem (``a.png`` and ``a.jpg`` would overwrite each other's ``a.txt``)."""
    stems = Counter(p.stem for p in files)
    shared = sorted(s for s, n in stems.items() if n > 1)
    if shared:
        log.warning(
            "%d inputs share their name with another of another type (e.g. %s): their outputs are named "
            "after the whole file name, e.g. %s",
            sum(stems[s] for s in shared),
            shared[0],
            next(p.name.replace(".", "_") for p in files if p.stem == shared[0]),
        )
    return {p: p.name.replace(".", "_") if stems[p.stem] > 1 else p.stem for p in files}


def infer_images(
    predictor: Predictor, files: list[Path], run_dir: Path, batch_size: int, draw_threshold: float, workers: int = 1
) -> int:
    """Labels and annotated PNGs for image files; returns how many."""
    names = output_names(files)
    labels_dir, images_dir = run_dir / "labels", run_dir / "images_annotated"
    make_folder(labels_dir)
    make_folder(images_dir)
    count = 0
    with tqdm(total=len(files), desc="infer", unit="img", disable=None) as bar:
        for chunk, images, found in predictor.stream(files, load_rgb, batch_size, workers):
            for path, image, det in zip(chunk, images, found):
                with atomic_path(labels_dir / f"{names[path]}.txt") as tmp:
                    write_label_file(tmp, kitti_objects(det, predictor.classes))
                with atomic_path(images_dir / f"{names[path]}.png") as tmp:
                    draw_detections(image, det, None, predictor.classes, draw_threshold).save(tmp, format="PNG")
                count += 1
            bar.update(len(chunk))
    return count


def infer_video(
    predictor: Predictor, path: Path, run_dir: Path, batch_size: int, draw_threshold: float, workers: int = 1
) -> int:
    """Labels per frame and an annotated MP4 for a video; returns how many frames."""
    import av  # FFmpeg bindings: loaded only for a video

    labels_dir = run_dir / "labels"
    make_folder(labels_dir)
    try:
        source = av.open(str(path))
        stream = source.streams.video[0]
    except (av.error.FFmpegError, IndexError) as err:
        raise DataError(path, f"cannot read video ({err})") from None
    out_path = run_dir / f"{path.stem}_annotated.mp4"
    count = 0
    with atomic_path(out_path) as tmp, source:
        sink = av.open(str(tmp), "w", format="mp4")
        rate = stream.average_rate or 25
        out = sink.add_stream("libx264", rate=rate)
        out.width, out.height = stream.codec_context.width // 2 * 2, stream.codec_context.height // 2 * 2
        out.pix_fmt = "yuv420p"
        broken: list[str] = []

        def frames():  # a damaged file: the frames before the damage are processed, and the user is told
            try:
                for f in source.decode(stream):
                    yield f.to_ndarray(format="rgb24")
            except av.error.FFmpegError as err:
                broken.append(str(err))

        with tqdm(total=stream.frames or None, desc="infer", unit="frame", disable=None) as bar:
            for chunk, _, found in predictor.stream(frames(), lambda frame: frame, batch_size, workers):
                for image, det in zip(chunk, found):
                    with atomic_path(labels_dir / f"{path.stem}_{count:06d}.txt") as t:
                        write_label_file(t, kitti_objects(det, predictor.classes))
                    drawn = np.asarray(draw_detections(image, det, None, predictor.classes, draw_threshold))
                    frame = av.VideoFrame.from_ndarray(
                        np.ascontiguousarray(drawn[: out.height, : out.width]), format="rgb24"
                    )
                    for packet in out.encode(frame):
                        sink.mux(packet)
                    count += 1
                bar.update(len(chunk))
            for packet in out.encode():
                sink.mux(packet)
        sink.close()
    if broken or (stream.frames and count < stream.frames):
        announced = f" of the {stream.frames} its header announces" if stream.frames else ""
        why = f"decoding stopped: {broken[0]}" if broken else "the file ends early"
        log.warning(
            "%s: %d frames could be decoded%s (%s; a truncated or damaged file?): the labels and the "
            "annotated video hold those %d",
            path,
            count,
            announced,
            why,
            count,
        )
    return count


def infer_path(
    predictor: Predictor, source: Path, run_dir: Path, batch_size: int, draw_threshold: float, workers: int
) -> tuple[int, str]:
    """Detections for an image, a folder of images or a video; returns the count and what was counted."""
    if source.is_file() and source.suffix.lower() in VIDEO_EXTENSIONS:
        return infer_video(predictor, source, run_dir, batch_size, draw_threshold, workers), "frames"
    if source.is_dir() or source.suffix.lower() in IMAGE_EXTENSIONS:
        return infer_images(predictor, image_inputs(source), run_dir, batch_size, draw_threshold, workers), "images"
    raise ConfigError(
        "input",
        str(source),
        f"an image ({', '.join(IMAGE_EXTENSIONS)}), a folder of images, or a video ({', '.join(VIDEO_EXTENSIONS)})",
    )
