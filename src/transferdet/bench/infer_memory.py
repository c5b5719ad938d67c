"""Peak memory of ``transferdet infer`` as the input grows: it must not grow with input length.

    python -m transferdet.bench.infer_memory CHECKPOINT [--small 100] [--large 2000] [--frames 100 1000]
                                             [--out FILE]

Generates synthetic images at the checkpoint's input size, then runs ``transferdet infer`` (a fresh
process each, as a user would) on a folder of ``--small`` and of ``--large`` images, and on a short and
a long video made of those images; reports each run's peak RSS (``ru_maxrss`` of the child) and wall
time, and the ratios large/small. Goal: ratios close to 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transferdet.bench.streams import write_video
from transferdet.config.schema import SynthConfig
from transferdet.data.images import load_rgb
from transferdet.data.synth import generate
from transferdet.detector import checkpoint


def _peak_rss_mib(args: list[str]) -> tuple[float, float]:
    """Peak RSS (MiB) and wall seconds of one command, read by a fresh wrapper process so that
    RUSAGE_CHILDREN holds that command alone."""
    wrapper = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "rc = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t, rc)"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True, check=True)
    rss_kib, seconds, rc = out.stdout.strip().splitlines()[-1].split()
    if int(rc) != 0:
        raise SystemExit(f"infer failed ({rc}): {' '.join(args)}")
    return int(rss_kib) / 1024, float(seconds)


def main() -> None:
    """Run the measurement from the command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--small", type=int, default=100)
    p.add_argument("--large", type=int, default=2000)
    p.add_argument("--frames", type=int, nargs=2, default=[100, 1000])
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    spec = checkpoint.read_spec(a.checkpoint)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth = SynthConfig(num_images=a.large, image_width=spec.width, image_height=spec.height, seed=123)
        synth.class_frequencies = {"car": 0.68, "pedestrian": 0.22, "cyclist": 0.10}
        generate(synth, tmp / "ds")
        images = sorted((tmp / "ds" / "image_2").glob("*.png"))
        small = tmp / "small"
        small.mkdir()
        for im in images[: a.small]:
            (small / im.name).symlink_to(im)
        inputs = {f"folder_{a.small}": small, f"folder_{a.large}": tmp / "ds" / "image_2"}
        for frames in a.frames:
            frames_rgb = [load_rgb(p) for p in images[:frames]]
            inputs[f"video_{frames}_frames"] = write_video(frames_rgb, frames, tmp / f"v{frames}.mp4")
        base = [sys.executable, "-m", "transferdet", "infer", f"checkpoint={a.checkpoint}"]
        for name, source in inputs.items():
            start = time.perf_counter()
            rss, seconds = _peak_rss_mib([*base, f"input={source}", f"hydra.run.dir={tmp / 'runs' / name}"])
            rows[name] = {"peak_rss_mib": rss, "seconds": seconds}
            print(
                f"{name:>22}: peak RSS {rss:8.1f} MiB, {seconds:6.1f} s ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    result = {
        "rows": rows,
        "ratio_folder": rows[f"folder_{a.large}"]["peak_rss_mib"] / rows[f"folder_{a.small}"]["peak_rss_mib"],
        "ratio_video": rows[f"video_{a.frames[1]}_frames"]["peak_rss_mib"]
        / rows[f"video_{a.frames[0]}_frames"]["peak_rss_mib"],
    }
    print(
        f"peak RSS ratio, {a.large} vs {a.small} images: {result['ratio_folder']:.3f}; "
        f"{a.frames[1]} vs {a.frames[0]} video frames: {result['ratio_video']:.3f}"
    )
    if a.out:
        a.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
