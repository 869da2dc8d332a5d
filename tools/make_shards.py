"""SCAIL-2-layout example folders -> validated webdataset pixel shards (atomic, resumable, reported).

    python tools/make_shards.py --root data/examples --out data/shards/train --samples-per-shard 100
    python tools/make_shards.py --root data/examples --out data/shards/train --mask-scheme none
    # split the work over processes: run with --part 0 --num-parts 2 and --part 1 --num-parts 2

Every candidate folder is validated (files present and readable, frame counts / fps / sizes consistent);
a bad sample is skipped and listed with its reason in <out>/report.json. Rerunning skips finished shards.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scail_lab.data.shards import make_shards, require_masks_for, summarize  # noqa: E402
from scail_lab.model.masks import MASK_SCHEME_NAMES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--root", required=True, type=Path, help="directory holding example folders (searched recursively)"
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--prefix", default="shard")
    p.add_argument("--samples-per-shard", type=int, default=100)
    p.add_argument(
        "--mask-scheme",
        default="colour",
        choices=sorted(MASK_SCHEME_NAMES),
        help="'none' makes mask files optional",
    )
    p.add_argument("--quick", action="store_true", help="check headers only instead of decoding every frame")
    p.add_argument("--part", type=int, default=0)
    p.add_argument("--num-parts", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = make_shards(
        args.root, args.out, prefix=args.prefix, samples_per_shard=args.samples_per_shard,
        require_masks=require_masks_for(args.mask_scheme), full_decode=not args.quick, part=args.part,
        num_parts=args.num_parts,
    )  # fmt: skip
    print(summarize(report))
    print(f"report: {args.out / 'report.json'}")
    return 0 if report["num_samples"] > 0 or report["pending_shards"] else 1


if __name__ == "__main__":
    sys.exit(main())
