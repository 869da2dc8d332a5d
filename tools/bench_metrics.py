"""Benchmark the weight-free metrics on CPU: milliseconds per frame at a few video sizes.

    python tools/bench_metrics.py --frames 81 --sizes 256 512 --threads 1

Prints a markdown table (paste it into docs/EVAL.md). Random uint8 videos; each metric sees one sample.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from scail_lab.metrics import L1, PSNR, SSIM, Frames, MaskIoU, TemporalDiffError, TemporalFlicker  # noqa: E402


def bench(frames: int, size: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    pred = Frames.of(rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8))
    target = Frames.of(rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8))
    mask = rng.random((frames, size, size)) > 0.5
    metrics = [PSNR(), SSIM(), SSIM("disco_gray7"), L1(), TemporalFlicker(), TemporalDiffError(), MaskIoU()]
    out = {}
    for metric in metrics:
        best = float("inf")
        for r in range(repeats):
            start = time.perf_counter()
            metric.update(pred, target, sample_id=str(r), target_mask=mask, pred_mask=mask)
            best = min(best, time.perf_counter() - start)
        out[metric.name] = 1000.0 * best / frames
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {size: bench(args.frames, size, args.repeats) for size in args.sizes}
    names = list(next(iter(rows.values())))
    print(f"ms per frame, best of {args.repeats}, {args.frames} frames, torch threads {args.threads}\n")
    print("| size | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for size, values in rows.items():
        print(f"| {size}x{size} | " + " | ".join(f"{values[n]:.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()
