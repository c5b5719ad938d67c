"""N concurrent video streams through one model, the way DeepStream runs cameras: every stream decoded by its
own thread, one frame of each stream batched together (nvstreammux's batch of N), the batches through
``Predictor.stream`` with its workers. Reports the frames per second each stream gets end to end (video
decoding included) and how many 30-FPS streams the model sustains.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from transferdet.inference.backends import machine_cores
from transferdet.inference.predictor import Predictor

FPS = 30.0


def write_video(images: list[np.ndarray], frames: int, path: Path) -> Path:
    """An H.264 MP4 of ``frames`` frames at 30 FPS cycling through ``images`` (``[h, w, 3]`` uint8 RGB, one
    size; cropped to even sides, as H.264's 4:2:0 needs)."""
    h, w = images[0].shape[0] // 2 * 2, images[0].shape[1] // 2 * 2
    with av.open(str(path), "w", format="mp4") as sink:
        stream = sink.add_stream("libx264", rate=int(FPS))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            rgb = np.ascontiguousarray(images[i % len(images)][:h, :w])
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                sink.mux(packet)
        for packet in stream.encode():
            sink.mux(packet)
    return path


def _decode(video: Path, frames: int, out: queue.Queue, stop: threading.Event, threads: int) -> None:
    """``frames`` RGB frames of ``video`` (played again from the start as often as needed) into ``out``, then
    None, decoded by ``threads`` FFmpeg threads; an error goes into ``out`` too, so the reader raises it."""
    try:
        sent = 0
        while sent < frames and not stop.is_set():
            with av.open(str(video)) as source:
                stream = source.streams.video[0]
                stream.thread_type = "AUTO"
                stream.codec_context.thread_count = threads
                for frame in source.decode(stream):
                    if sent == frames or stop.is_set():
                        break
                    out.put(frame.to_ndarray(format="rgb24", threads=1))
                    sent += 1
            if sent == 0:
                raise ValueError(f"{video}: no video frames")
        out.put(None)
    except Exception as err:  # noqa: BLE001 - handed to the reading thread
        out.put(err)


def interleaved(video: Path, streams: int, frames: int) -> Iterator[np.ndarray]:
    """Frame 0 of stream 0, frame 0 of stream 1, ..., frame 1 of stream 0, ...: ``streams`` copies of ``video``
    decoded by one thread each (a few frames ahead at most), ``frames`` frames each. The cores are shared out
    between the streams' decoders (FFmpeg's own threads, one each at least): 256 streams with a thread per
    core each ran out of threads on a 16-core machine."""
    stop = threading.Event()
    queues = [queue.Queue(maxsize=4) for _ in range(streams)]
    each = max(1, machine_cores() // streams)
    threads = [threading.Thread(target=_decode, args=(video, frames, q, stop, each), daemon=True) for q in queues]
    for t in threads:
        t.start()
    try:
        for _ in range(frames):
            for q in queues:
                frame = q.get()
                if isinstance(frame, Exception):
                    raise frame
                yield frame
    finally:
        stop.set()
        for q in queues:  # unblock decoders waiting on a full queue
            while not q.empty():
                q.get_nowait()
        for t in threads:
            t.join()


def measure_streams(predictor: Predictor, video: Path, counts: list[int], frames: int, workers: int) -> list[dict]:
    """For each number of streams: the frames per second each stream gets end to end, batches of one frame per
    stream; ``sustains_30fps`` where each gets at least 30."""
    rows = []
    for n in counts:
        start = time.perf_counter()
        done = sum(len(found) for _, _, found in predictor.stream(interleaved(video, n, frames), _same, n, workers))
        seconds = time.perf_counter() - start
        if done != n * frames:
            raise RuntimeError(f"{n} streams: {done} frames came out of {n * frames}")
        per_stream = frames / seconds
        rows.append(
            {
                "streams": n,
                "fps_per_stream": per_stream,
                "frames_per_s": n * frames / seconds,
                "sustains_30fps": per_stream >= FPS,
            }
        )
    return rows


def streams_sustained(rows: list[dict]) -> int:
    """The most streams measured at which every stream got 30 FPS (0: not even one)."""
    return max([r["streams"] for r in rows if r["sustains_30fps"]], default=0)


def _same(frame: np.ndarray) -> np.ndarray:
    return frame
