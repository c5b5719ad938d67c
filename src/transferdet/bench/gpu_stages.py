"""Where a GPU batch's time goes, stage by stage, each timed alone on one thread (CUDA synchronised around it):

    python -m transferdet.bench.gpu_stages CHECKPOINT IMAGE_DIR [--batch 64] [--precision fp16] [--out F.json]

decoding the JPEG files (nvJPEG, one call a batch; the host decoder beside it), preprocessing on the GPU,
the network (the CUDA graph), thresholding and bounding on the GPU with the candidates' copy to the host, and
clustering on the host. The images of IMAGE_DIR are re-encoded as JPEG (quality 95), as the benchmark's
``benchmark.image_encoding=jpeg`` does. Where there is no GPU everything runs on the CPU (a smoke test).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from transferdet.bench.models import jpeg, timings
from transferdet.config.tasks import Precision
from transferdet.data.images import decode_rgb, load_rgb
from transferdet.inference.device import decode_batch
from transferdet.inference.predictor import Predictor


def _ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``fn``, the device synchronised after each call (so before the next)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    return 1e3 * float(np.median(timings(lambda: (fn(), sync()), repeats)))


def stages(predictor: Predictor, datas: list[bytes], repeats: int) -> dict[str, float]:
    """Milliseconds per batch of each stage for the batch ``datas`` (JPEG files' bytes)."""
    decoded = decode_batch(datas, predictor.device)
    batch = predictor.preprocess_batch(decoded)
    maps = predictor.maps(batch)
    post = predictor.postprocessor
    candidates = post.candidates(*maps)
    return {
        "decode_gpu_ms": _ms(lambda: decode_batch(datas, predictor.device), repeats),
        "decode_host_ms": _ms(lambda: [decode_rgb(d, "x") for d in datas], max(1, repeats // 4)),
        "preprocess_ms": _ms(lambda: predictor.preprocess_batch(decoded), repeats),
        "network_ms": _ms(lambda: predictor.maps(batch), repeats),
        "candidates_to_host_ms": _ms(lambda: post.candidates(*maps), repeats),
        "clustering_ms": _ms(lambda: post.cluster(len(datas), *candidates), repeats),
        "candidates_per_image": len(candidates[0]) / len(datas),
        "end_to_end_ms": _ms(lambda: predictor(datas), repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("images", type=Path)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", choices=["fp32", "fp16"], default="fp16")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    precision = Precision(args.precision) if torch.cuda.is_available() else Precision.fp32
    predictor = Predictor.load(args.checkpoint, precision=precision)
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    encoded = [jpeg(load_rgb(p)) for p in files[: args.batch]]
    datas = [encoded[i % len(encoded)] for i in range(args.batch)]
    result = {"device": str(predictor.device), "precision": precision.value, "batch": args.batch}
    result.update(stages(predictor, datas, args.repeats))
    for key, value in result.items():
        print(f"{key:>24}: {value:.3f}" if isinstance(value, float) else f"{key:>24}: {value}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
