"""Write synthetic motion pairs as SCAIL-2-layout folders and/or webdataset shards, plus a contact sheet.

    python tools/make_synthetic.py --out data/synth --train 200 --val 24 --test 24
    python tools/make_synthetic.py --out data/synth --train 1000 --format shards --height 128 --width 96

Layout: <out>/folders/<split>/<split>_<index>/ (ref.png, rendered_v2.mp4, target.mp4, gt.json, ...),
<out>/shards/<split>/shard-*.tar (+ report.json), <out>/contact_sheet.png, <out>/world.json.
Reruns resume: finished folders and shards are kept. Shards check each video's header (frame count, fps, size
agreeing across the sample's videos), not every frame: these videos were encoded a moment ago from frames this
tool rendered (`tools/make_shards.py` decodes every frame of data from elsewhere).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from scail_lab.data.folders import collect_files, validate_sample, with_validated_meta  # noqa: E402
from scail_lab.data.media import LOSSLESS, atomic_write_folder  # noqa: E402
from scail_lab.data.parallel import parallel_map  # noqa: E402
from scail_lab.data.shards import ShardJob, make_shards, run_jobs, shard_name, signature_of, summarize  # noqa: E402
from scail_lab.data.synthetic.export import contact_sheet, sample_files, write_png  # noqa: E402
from scail_lab.data.synthetic.motion import MOTION_FAMILIES  # noqa: E402
from scail_lab.data.synthetic.world import SPLITS, SyntheticWorld, WorldConfig  # noqa: E402
from scail_lab.files import atomic_write_bytes  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--train", type=int, default=64, help="number of train samples")
    p.add_argument("--val", type=int, default=8)
    p.add_argument("--test", type=int, default=8)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--frames", type=int, default=17, help="frames per clip, 4k+1")
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("folders", "shards", "both"), default="both")
    p.add_argument("--samples-per-shard", type=int, default=64)
    p.add_argument("--rgb-quality", default=LOSSLESS, help="'lossless' or a yuv420p CRF for RGB videos")
    p.add_argument("--contact-sheet", type=int, default=8, help="rows (train samples) in contact_sheet.png")
    p.add_argument("--workers", type=int, default=1,
                   help="processes that render folders and write shards (the world does not depend on it)")
    p.add_argument("--families", nargs="+", default=list(MOTION_FAMILIES), choices=MOTION_FAMILIES,
                   help="motion families the samples draw from (e.g. all but one, for a held-out family)")  # fmt: skip
    for name, default in (("p-replace", 0.3), ("p-pose-driven", 0.25), ("p-two-characters", 0.2),
                          ("p-pan", 0.3), ("p-continuation", 0.2)):  # fmt: skip
        p.add_argument(f"--{name}", type=float, default=default)
    return p.parse_args(argv)


def synthetic_jobs(world: SyntheticWorld, split: str, count: int, per_shard: int, quality) -> list[ShardJob]:
    """Shard jobs that render samples straight into shards (no folders)."""
    jobs = []
    for start in range(0, count, per_shard):
        indices = list(range(start, min(start + per_shard, count)))
        keys = [f"{split}_{i:06d}" for i in indices]

        def units(indices=indices, keys=keys):
            for index, key in zip(indices, keys, strict=True):

                def load(index=index, key=key) -> dict:
                    files = sample_files(world.sample(split, index), world.config.fps, quality)
                    raw = collect_files(files, key, source=f"synthetic:{split}/{index}")
                    return with_validated_meta(raw, validate_sample(raw, full_decode=False))

                yield key, load

        extra = {"world": dataclasses.asdict(world.config), "quality": quality}
        jobs.append(ShardJob(shard_name("shard", len(jobs)), signature_of(keys, extra), units, keys))
    return jobs


def _write_folders(world: SyntheticWorld, split: str, indices: list[int], root: Path, quality) -> None:
    """Render and write the folders of `indices` that do not exist yet (each written whole, then renamed)."""
    for index in indices:
        folder = root / f"{split}_{index:06d}"
        if not folder.exists():
            atomic_write_folder(sample_files(world.sample(split, index), world.config.fps, quality), folder)


def _shard_part(root: Path, out: Path, samples_per_shard: int, num_parts: int, part: int) -> None:
    make_shards(root, out, samples_per_shard=samples_per_shard, full_decode=False, part=part, num_parts=num_parts,
                progress=False)  # fmt: skip


def _synthetic_part(world, split, count, samples_per_shard, quality, out, num_parts, part) -> None:
    jobs = synthetic_jobs(world, split, count, samples_per_shard, quality)
    run_jobs(jobs, out, config={"world": dataclasses.asdict(world.config)}, part=part, num_parts=num_parts,
             progress=False)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quality = args.rgb_quality if args.rgb_quality == LOSSLESS else int(args.rgb_quality)
    config = WorldConfig(
        height=args.height, width=args.width, num_frames=args.frames, fps=args.fps, seed=args.seed,
        p_replace=args.p_replace, p_pose_driven=args.p_pose_driven, p_two_characters=args.p_two_characters,
        p_pan=args.p_pan, p_continuation=args.p_continuation, families=tuple(args.families),
    )  # fmt: skip
    world = SyntheticWorld(config)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "world.json", json.dumps(dataclasses.asdict(config), indent=1).encode())
    counts = {"train": args.train, "val": args.val, "test": args.test}
    for split in SPLITS:
        if counts[split] <= 0:
            continue
        if args.format in ("folders", "both"):
            root = args.out / "folders" / split
            if args.workers == 1:
                for index in tqdm(range(counts[split]), desc=f"{split} folders", unit="sample"):
                    _write_folders(world, split, [index], root, quality)
            else:  # interleaved index sets: every process gets a like share of one- and two-character samples
                chunks = [list(range(w, counts[split], args.workers)) for w in range(args.workers)]
                print(f"[{split}] rendering {counts[split]} folders in {args.workers} processes")
                parallel_map(partial(_write_folders, world, split, root=root, quality=quality), chunks, args.workers)
            if args.format == "both":
                shards = args.out / "shards" / split
                if args.workers > 1:  # each process validates and writes every workers-th shard
                    part = partial(_shard_part, root, shards, args.samples_per_shard, args.workers)
                    parallel_map(part, list(range(args.workers)), args.workers)
                report = make_shards(root, shards, samples_per_shard=args.samples_per_shard,
                                     full_decode=False)  # the report of all parts
                print(f"[{split}] {summarize(report)}")
        else:
            if args.workers > 1:
                part = partial(_synthetic_part, world, split, counts[split], args.samples_per_shard, quality,
                               args.out / "shards" / split, args.workers)  # fmt: skip
                parallel_map(part, list(range(args.workers)), args.workers)
            jobs = synthetic_jobs(world, split, counts[split], args.samples_per_shard, quality)
            report = run_jobs(jobs, args.out / "shards" / split, config={"world": dataclasses.asdict(config)})
            print(f"[{split}] {summarize(report)}")
    rows = min(args.contact_sheet, args.train)
    if rows > 0:
        sheet = contact_sheet([world.sample("train", i) for i in range(rows)])
        write_png(sheet, args.out / "contact_sheet.png")
        print(f"contact sheet: {args.out / 'contact_sheet.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
