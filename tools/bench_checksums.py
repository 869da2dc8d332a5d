"""What verifying member checksums costs the loader: one epoch over pixel (and latent) shards with
data.verify_checksums on and off, interleaved over rounds; prints medians and the ratio (docs/DATA.md).

    python tools/bench_checksums.py --shards data/synthetic/shards/train --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scail_lab.data import AugmentConfig, FrameSampling, build_dataloader  # noqa: E402
from scail_lab.data.shards import iter_shard, list_shards, verify_sample_checksums  # noqa: E402


def epoch_seconds(shards: str, kind: str, verify: bool, frames: int) -> float:
    loader = build_dataloader(shards=shards, kind=kind, batch_size=4, shuffle=False, augment=AugmentConfig.off(),
                              sampling=FrameSampling(frame_buckets=(frames,), random_start=False),
                              verify_checksums=verify)  # fmt: skip
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True)
    p.add_argument("--kind", default="pixel", choices=("pixel", "latent"))
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    raws = [r for url in list_shards(args.shards) for r in iter_shard(url)]
    start = time.perf_counter()
    checked = sum(verify_sample_checksums(r) for r in raws)
    hash_seconds = time.perf_counter() - start
    times = {True: [], False: []}
    for _ in range(args.rounds):
        for verify in (False, True):
            times[verify].append(epoch_seconds(args.shards, args.kind, verify, args.frames))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    size = sum(len(v) for r in raws for k, v in r.items() if isinstance(v, bytes))
    print(f"{len(raws)} {args.kind} samples ({checked} with checksums), {size / 1e6:.1f} MB of members")
    print(f"hashing alone: {hash_seconds:.3f} s ({size / 1e6 / max(hash_seconds, 1e-9):.0f} MB/s)")
    print(f"epoch, median of {args.rounds}: verify off {off:.2f} s, on {on:.2f} s, ratio {on / off:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
