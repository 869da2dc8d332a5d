"""Pixel shards or example folders -> latent shards (VAE latents, mask codes, optional text / CLIP embeddings).

    python tools/make_latent_shards.py --shards 'data/shards/train/shard-{000000..000009}.tar' \
        --out data/latents/train --encoders my_encoders.yaml --frames 17 --buckets 64x64
    python tools/make_latent_shards.py --folders data/examples --out data/latents/train --vae my_pkg.vae:TinyVAE

`--encoders` is a YAML file with `_target_` nodes under `vae` (required), `text_encoder` and
`image_encoder` (optional), instantiated with Hydra, e.g.
    vae: {_target_: scail_lab.encoders.vae.WanVAE, checkpoint: /ckpt/Wan2.1_VAE.pth}
    text_encoder: {_target_: scail_lab.encoders.text.UMT5Encoder, checkpoint: /ckpt/umt5-xxl}
Encoders follow the protocols in scail_lab/data/latents.py. One latent shard is written per input shard
(same name); reruns skip finished shards; <out>/report.json lists skipped samples with reasons.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scail_lab.data import FrameSampling, LatentCacher, ResolutionBuckets, resolve_mask_scheme  # noqa: E402
from scail_lab.data.caching import make_latent_shards  # noqa: E402
from scail_lab.data.shards import summarize  # noqa: E402
from scail_lab.model.interfaces import POSE_DOWNSAMPLES  # noqa: E402
from scail_lab.model.masks import MASK_SCHEME_NAMES  # noqa: E402


def parse_buckets(text: str) -> tuple[tuple[int, int], ...]:
    """'64x64,64x96' -> ((64, 64), (64, 96)) as (H, W)."""
    sizes = []
    for item in text.split(","):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError as exc:
            raise ValueError(f"bucket {item!r} must look like HxW, e.g. 512x896") from exc
        sizes.append((h, w))
    return tuple(sizes)


def load_encoders(args: argparse.Namespace) -> dict:
    if args.encoders is not None:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(args.encoders)
        unknown = set(cfg) - {"vae", "text_encoder", "image_encoder"}
        if unknown or "vae" not in cfg:
            raise ValueError(f"{args.encoders}: needs 'vae' and optionally 'text_encoder', 'image_encoder'; got {sorted(cfg)}")
        return {name: instantiate(cfg[name]) for name in cfg if cfg[name] is not None}
    module, _, attr = args.vae.partition(":")
    if not attr:
        raise ValueError(f"--vae must look like package.module:ClassName, got {args.vae!r}")
    return {"vae": getattr(importlib.import_module(module), attr)()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", help="pixel shards: brace pattern, '::' list or directory")
    src.add_argument("--folders", type=Path, help="root of SCAIL-2-layout example folders")
    enc = p.add_mutually_exclusive_group(required=True)
    enc.add_argument("--encoders", type=Path, help="YAML with _target_ nodes: vae, text_encoder, image_encoder")
    enc.add_argument("--vae", help="package.module:ClassName of a VAE constructible without arguments")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--mask-scheme", default="colour", choices=sorted(MASK_SCHEME_NAMES))
    p.add_argument("--frames", default="17", help="frame buckets (4k+1), comma separated, largest used first")
    p.add_argument("--fps", type=float, default=None, help="resample clips to this fps (default: native)")
    p.add_argument("--buckets", default="64x64", help="resolution buckets HxW, comma separated (multiples of 32)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    p.add_argument("--no-variants", action="store_true", help="skip augmented and reverse-driving variants")
    p.add_argument("--windows", type=int, default=1,
                   help="up to this many clips per long video (keys <key>, <key>_w001, ...); default: the first only")
    p.add_argument("--window-overlap", type=int, default=5,
                   help="frames each window shares with the previous one (5: SCAIL-2's segment overlap)")
    p.add_argument("--pose-downsample", type=int, default=2, choices=POSE_DOWNSAMPLES,
                   help="the model interface's pose_downsample: 2 = SCAIL-2's half-resolution driving latents")
    p.add_argument("--samples-per-shard", type=int, default=100, help="with --folders")
    p.add_argument("--device", default="cpu")
    p.add_argument("--part", type=int, default=0)
    p.add_argument("--num-parts", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    encoders = load_encoders(args)
    cacher = LatentCacher(
        vae=encoders["vae"], mask_scheme=resolve_mask_scheme(args.mask_scheme),
        text_encoder=encoders.get("text_encoder"), image_encoder=encoders.get("image_encoder"),
        sampling=FrameSampling(frame_buckets=tuple(int(n) for n in args.frames.split(",")), target_fps=args.fps,
                               random_start=False),
        buckets=ResolutionBuckets(sizes=parse_buckets(args.buckets)), dtype=args.dtype,
        include_variants=not args.no_variants, device=args.device, windows=args.windows,
        window_overlap=args.window_overlap, pose_downsample=args.pose_downsample,
    )  # fmt: skip
    report = make_latent_shards(
        cacher, args.out, shards=args.shards, folders=args.folders, samples_per_shard=args.samples_per_shard,
        part=args.part, num_parts=args.num_parts,
    )  # fmt: skip
    print(summarize(report))
    print(f"report: {args.out / 'report.json'}")
    return 0 if report["num_samples"] > 0 or report["pending_shards"] else 1


if __name__ == "__main__":
    sys.exit(main())
