"""Benchmark the data pipeline: samples/s from plain folders, pixel shards and latent shards.

    python tools/bench_data.py --sizes 64,256 --samples 48 --workers 0,2 --write-docs

For each frame size: writes synthetic folders (17 frames), shards them, caches latents with a stand-in
encoder (8x8 average pool + fixed linear map: the benchmark measures loading, not a real VAE), then
times one epoch per (source, workers). "steady" excludes the time to the first batch (worker start-up,
first shard open), which is reported separately. `--write-docs` replaces the `## Data` section of
docs/PERFORMANCE.md with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from scail_lab.data import (  # noqa: E402
    AugmentConfig,
    FolderDataset,
    FrameSampling,
    LatentCacher,
    ResolutionBuckets,
    build_dataloader,
    make_shards,
)
from scail_lab.data.caching import make_latent_shards  # noqa: E402
from scail_lab.data.media import atomic_write_folder  # noqa: E402
from scail_lab.data.synthetic.export import sample_files  # noqa: E402
from scail_lab.data.synthetic.world import SyntheticWorld, WorldConfig  # noqa: E402
from scail_lab.model.masks import ColourMaskScheme  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class StandInVAE:
    """Shape-correct stand-in for the VAE protocol (pool 8x8, fixed 3->16 map, temporal stride 4)."""

    def __init__(self) -> None:
        self.proj = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool3d(video, kernel_size=(1, 8, 8))[:, :, ::4]
        return torch.einsum("oc,bcthw->bothw", self.proj, pooled)


def timed_epoch(loader) -> dict:
    start = time.perf_counter()
    first, count, first_batch = None, 0, 0
    for batch in loader:
        n = len(batch["key"])
        if first is None:
            first, first_batch = time.perf_counter(), n
        count += n
    end = time.perf_counter()
    steady = (count - first_batch) / (end - first) if first is not None and count > first_batch else None
    return {"samples": count, "seconds": end - start, "first_batch_s": (first or end) - start,
            "samples_per_s": count / (end - start), "steady_samples_per_s": steady}  # fmt: skip


def bench_size(size: int, quality: str | int, args: argparse.Namespace, work: Path) -> list[dict]:
    frames, n = args.frames, args.samples
    base = work / f"s{size}_{quality}"
    folders, pixels, latents = base / "folders", base / "pixels", base / "latents"
    rows: list[dict] = []
    cfg = WorldConfig(height=size, width=size, num_frames=frames, fps=8.0)
    world = SyntheticWorld(cfg)
    t = time.perf_counter()
    for i in range(n):
        if not (folders / f"train_{i:06d}").exists():
            atomic_write_folder(sample_files(world.sample("train", i), cfg.fps, quality), folders / f"train_{i:06d}")
    gen = time.perf_counter() - t
    t = time.perf_counter()
    report = make_shards(folders, pixels, samples_per_shard=max(1, n // 8), progress=False)
    shard_s = time.perf_counter() - t
    sampling = FrameSampling(frame_buckets=(frames,), random_start=False)
    buckets = ResolutionBuckets(sizes=((size, size),))
    cacher = LatentCacher(vae=StandInVAE(), mask_scheme=ColourMaskScheme(), sampling=sampling, buckets=buckets)
    t = time.perf_counter()
    make_latent_shards(cacher, latents, shards=report["pattern"], progress=False)
    cache_s = time.perf_counter() - t
    tag = {"size": size, "videos": str(quality)}
    rows.append({**tag, "stage": "make_synthetic (render + encode)", "samples_per_s": n / gen if gen > 0.05 else None})
    rows.append({**tag, "stage": "make_shards (validate + write)", "samples_per_s": n / shard_s})
    rows.append({**tag, "stage": "latent cache (decode + stand-in VAE)", "samples_per_s": n / cache_s})

    train_sampling = FrameSampling(frame_buckets=(frames,), random_start=True)
    direct = FolderDataset(folders, sampling=sampling, buckets=buckets)
    t = time.perf_counter()
    for i in range(len(direct)):
        direct[i]
    rows.append({**tag, "stage": "FolderDataset[i], no workers", "samples_per_s": len(direct) / (time.perf_counter() - t)})
    common = {"batch_size": args.batch, "sampling": train_sampling, "augment": AugmentConfig(), "shuffle_buffer": 16}
    for workers in args.workers:
        for label, kw in (
            ("folders", {"folders": str(folders), "buckets": buckets}),
            ("pixel shards", {"shards": report["pattern"], "buckets": buckets}),
            ("latent shards", {"shards": str(latents), "kind": "latent"}),
        ):
            loader = build_dataloader(num_workers=workers, **kw, **common)
            timed_epoch(loader)  # warm-up epoch (page cache, imports)
            # best of `repeats` epochs: the machine is shared, the fastest epoch is the least disturbed
            result = max((timed_epoch(loader) for _ in range(args.repeats)), key=lambda r: r["samples_per_s"])
            rows.append({**tag, "stage": f"loader: {label}, {workers} workers", **result})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "## Data",
        "",
        f"Measured by `python tools/bench_data.py --sizes {','.join(map(str, args.sizes))} --samples {args.samples} "
        f"--workers {','.join(map(str, args.workers))} --batch {args.batch} --rgb-quality {','.join(args.rgb_quality)}` "
        f"on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}), load average {load:.1f} at the end "
        "(the machine is shared, so numbers are lower bounds; loaders report the best of "
        f"{args.repeats} epochs after a warm-up epoch). Synthetic samples, "
        f"{args.frames} frames, lossless H.264 masks, RGB videos lossless or yuv420p at the given CRF, colour mask "
        "scheme, SCAIL-2 augmentation "
        "probabilities. 'steady' excludes the time to the first batch (worker start-up).",
        "",
        "| size | RGB videos | stage | samples/s | steady samples/s | first batch (s) |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        sps = "n/a" if r.get("samples_per_s") is None else f"{r['samples_per_s']:.1f}"
        steady = f"{r['steady_samples_per_s']:.1f}" if r.get("steady_samples_per_s") is not None else ""
        first = f"{r['first_batch_s']:.2f}" if "first_batch_s" in r else ""
        lines.append(f"| {r['size']}x{r['size']} | {r['videos']} | {r['stage']} | {sps} | {steady} | {first} |")
    lines += [
        "",
        "Reading:",
        "- Latent shards skip all video decoding and are 10-50x faster than any pixel path; use them for training.",
        "- Pixel shards and folders decode the same mp4 bytes with decord (one thread per reader); shards save the",
        "  header probe (validated numbers sit in meta.json) and many small file opens. Decoding dominates, and",
        "  lossless RGB video (exact ground truth) decodes about 2x slower than yuv420p CRF 16 at 256x256.",
        "- On this shared machine a process gets a share of the cores, so 2 workers gain more than a free 2-core",
        "  machine would (more than 2x at 64x64); at 256x256 lossless, decoding saturates the cores either way.",
        "- Latent batches from workers pay inter-process tensor transfer and worker start-up on short epochs",
        "  (compare 'steady'); with tiny latents 0 workers is fastest.",
        "- make_shards decodes every frame to validate (`--quick` checks headers only).",
        "",
    ]
    return "\n".join(lines)


def write_docs(section: str) -> Path:
    """Replace (or append) the `## Data` section of docs/PERFORMANCE.md, keeping other sections."""
    path = ROOT / "docs" / "PERFORMANCE.md"
    text = path.read_text() if path.exists() else "# Performance\n\n"
    start = text.find("\n## Data\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[: start + 1] + section + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/scail_bench_data"))
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[64, 256])
    p.add_argument("--samples", type=int, default=48)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--workers", type=lambda s: [int(v) for v in s.split(",")], default=[0, 2])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2, help="timed epochs per loader (the best is reported)")
    p.add_argument("--rgb-quality", type=lambda s: s.split(","), default=["lossless", "16"],
                   help="RGB video encodings to compare: 'lossless' and/or yuv420p CRFs (masks stay lossless)")
    p.add_argument("--fresh", action="store_true", help="delete the work directory first")
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--from-results", type=Path, help="re-render the table from a results.json of an earlier run")
    args = p.parse_args(argv)
    if args.from_results is not None:
        rows = json.loads(args.from_results.read_text())
    else:
        if args.fresh and args.work.exists():
            shutil.rmtree(args.work)
        rows = []
        for size in args.sizes:
            for quality in args.rgb_quality:
                rows += bench_size(size, quality if quality == "lossless" else int(quality), args, args.work)
        (args.work / "results.json").write_text(json.dumps(rows, indent=1))
    section = markdown(rows, args)
    print(section)
    if args.write_docs:
        print(f"wrote {write_docs(section)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
