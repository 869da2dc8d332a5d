"""Fit the light CPU video autoencoder (scail_lab.encoders.light_vae.LightVAE) and measure its PSNR.

Trains on video files (glob patterns, or directories searched recursively for *.mp4, e.g. a folder of
sample folders) or, without --videos, on generated clips of moving coloured shapes. Reconstruction PSNR
is measured on held-out generated clips (a different seed) and, with --videos, on held-out files.
Writes OUT.safetensors and OUT.json (config, latent statistics, metrics) atomically.

    python tools/fit_light_vae.py --out checkpoints/light_vae.safetensors --steps 600
    python tools/fit_light_vae.py --videos 'data/samples/**/*.mp4' --out ckpt/light_vae.safetensors
"""

from __future__ import annotations

import argparse
import glob
import logging
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a plain checkout

import numpy as np
import torch
from tqdm import tqdm

from scail_lab.encoders.light_vae import LightVAE  # noqa: E402
from scail_lab.files import atomic_path  # noqa: E402

logger = logging.getLogger("fit_light_vae")

# ---------------------------------------------------------------------------- synthetic clips


def moving_shapes(num_clips: int, num_frames: int, size: int, seed: int) -> torch.Tensor:
    """Clips of 1-4 coloured discs / boxes moving (and slowly growing) over a colour gradient.

    Returns float32 [num_clips, 3, num_frames, size, size] in [-1, 1].
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # [S, S] each, in [0, 1)
    clips = np.empty((num_clips, 3, num_frames, size, size), dtype=np.float32)
    for i in range(num_clips):
        c0, c1 = rng.uniform(-1, 1, (2, 3, 1, 1)).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy  # [S, S]
        ramp = (ramp - ramp.min()) / max(
            float(ramp.max() - ramp.min()), 1e-6
        )  # in [0, 1]: pixels stay in [-1, 1]
        background = c0 + (c1 - c0) * ramp[None]  # [3, S, S]
        shapes = []
        for _ in range(rng.integers(1, 5)):
            shapes.append(
                dict(
                    kind=rng.integers(0, 2),
                    centre=rng.uniform(0.15, 0.85, 2),
                    velocity=rng.uniform(-0.03, 0.03, 2),
                    radius=rng.uniform(0.06, 0.2),
                    growth=rng.uniform(-0.004, 0.004),
                    colour=rng.uniform(-1, 1, (3, 1, 1)).astype(np.float32),
                )
            )
        for f in range(num_frames):
            frame = background.copy()
            for s in shapes:
                cy, cx = s["centre"] + f * s["velocity"]
                r = max(0.03, s["radius"] + f * s["growth"])
                if s["kind"] == 0:
                    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
                else:
                    inside = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < 0.7 * r)
                frame = np.where(inside[None], s["colour"], frame)
            clips[i, :, f] = frame
    return torch.from_numpy(clips)


# ---------------------------------------------------------------------------- video files


def find_videos(patterns: list[str]) -> list[Path]:
    """Expand glob patterns; directories are searched recursively for *.mp4."""
    found: list[Path] = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            found += sorted(p.rglob("*.mp4"))
        else:
            found += sorted(Path(m) for m in glob.glob(pattern, recursive=True))
    unique = sorted(set(found))
    if not unique:
        raise ValueError(f"no video files match {patterns}")
    return unique


def read_video(path: Path, size: int, max_frames: int) -> np.ndarray:
    """Decode up to max_frames RGB frames, resize the short side to `size` and centre-crop: uint8 [F, S, S, 3]."""
    import av
    import cv2

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            scale = size / min(h, w)
            rgb = cv2.resize(
                rgb, (max(size, round(w * scale)), max(size, round(h * scale))), interpolation=cv2.INTER_AREA
            )
            top, left = (rgb.shape[0] - size) // 2, (rgb.shape[1] - size) // 2
            frames.append(rgb[top : top + size, left : left + size])
            if len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"{path}: no decodable video frames")
    return np.stack(frames)


def load_videos(paths: list[Path], size: int, num_frames: int, max_frames: int) -> list[np.ndarray]:
    """Read every file, skipping (and reporting) unreadable or too-short ones."""
    videos, skipped = [], []
    for path in tqdm(paths, desc="reading videos", unit="file"):
        try:
            video = read_video(path, size, max_frames)
        except (ValueError, OSError) as err:  # av.error.* derive from OSError / ValueError
            skipped.append(f"{path}: {err}")
            continue
        if len(video) < num_frames:
            skipped.append(f"{path}: {len(video)} frames < {num_frames}")
            continue
        videos.append(video)
    for line in skipped:
        logger.warning("skipped %s", line)
    logger.info("read %d videos, skipped %d", len(videos), len(skipped))
    if not videos:
        raise ValueError(f"none of the {len(paths)} video files is usable (see warnings)")
    return videos


def sample_clips(
    videos: list[np.ndarray], batch: int, num_frames: int, rng: np.random.Generator
) -> torch.Tensor:
    """Random windows of num_frames frames: float32 [batch, 3, num_frames, S, S] in [-1, 1]."""
    out = []
    for _ in range(batch):
        video = videos[rng.integers(len(videos))]
        start = rng.integers(0, len(video) - num_frames + 1)
        clip = torch.from_numpy(video[start : start + num_frames]).permute(3, 0, 1, 2)  # [3, N, S, S]
        out.append(clip.float() / 127.5 - 1.0)
    return torch.stack(out)


# ---------------------------------------------------------------------------- fit / evaluate


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB for pixels in [-1, 1] (peak-to-peak 2)."""
    mse = torch.mean((reconstruction.float() - target.float()) ** 2).item()
    return 10.0 * math.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def evaluate(model: LightVAE, clips: torch.Tensor, batch: int = 8) -> dict[str, float]:
    """PSNR of decode(encode(clips)) through the public (normalised, clamped) interface."""
    model.eval()
    recon = torch.cat([model.decode(model.encode(clips[i : i + batch])) for i in range(0, len(clips), batch)])
    return {"psnr": psnr(recon, clips), "psnr_frame0": psnr(recon[:, :, :1], clips[:, :, :1])}


@torch.no_grad()
def write_grid(model: LightVAE, clips: torch.Tensor, path: Path, num: int = 4) -> None:
    """PNG with rows (original, reconstruction) for `num` clips, frames left to right (atomic write)."""
    import imageio.v3 as iio

    model.eval()
    clips = clips[:num]
    recon = model.decode(model.encode(clips))
    rows = torch.stack([clips, recon], dim=1).flatten(0, 1)  # [2 num, 3, N, S, S]
    r, c, n, s, _ = rows.shape
    grid = rows.permute(0, 3, 2, 4, 1).reshape(r * s, n * s, c)  # [rows * S, N * S, 3]
    pixels = ((grid + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    with atomic_path(path, suffix=".png") as tmp:
        iio.imwrite(tmp, pixels)


@torch.no_grad()
def latent_stats(model: LightVAE, clips: torch.Tensor, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean / std [Z] of the raw latents of `clips`."""
    z = torch.cat([model.encode_raw(clips[i : i + batch]) for i in range(0, len(clips), batch)])
    z = z.transpose(0, 1).reshape(model.latent_channels, -1)  # [Z, B*T*h*w]
    return z.mean(dim=1), z.std(dim=1).clamp_min(1e-4)


def grow_decoder(model: LightVAE, refine_blocks: int | None) -> LightVAE:
    """`model` with `refine_blocks` decoder refine blocks (None: as it has); added blocks start as the identity."""
    have = model.config.get("refine_blocks", 0)
    if refine_blocks is None or refine_blocks == have:
        return model
    if refine_blocks < have:
        raise ValueError(f"--refine-blocks {refine_blocks} < the {have} the --init VAE has: a refit cannot drop them")
    grown = LightVAE(**{**model.config, "refine_blocks": refine_blocks})
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not key.startswith("decoder_refine.") for key in missing):
        raise ValueError(f"growing the decoder: unexpected keys {unexpected}, missing {missing}")
    return grown


def fit(args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    if args.frames < 5 or (args.frames - 1) % 4:
        raise ValueError(f"--frames must be 4k+1 and >= 5, got {args.frames}")
    if args.size % 8:
        raise ValueError(f"--size must be a multiple of 8, got {args.size}")
    held_out = moving_shapes(args.eval_clips, args.eval_frames, args.size, seed=args.seed + 10_000)
    videos, held_out_files = None, None
    if args.videos:
        paths = find_videos(args.videos)
        num_eval = min(len(paths) // 10, args.eval_clips)
        videos = load_videos(paths[num_eval:], args.size, args.frames, args.max_frames)
        if num_eval:
            eval_videos = load_videos(paths[:num_eval], args.size, args.eval_frames, args.max_frames)
            held_out_files = sample_clips(
                eval_videos, args.eval_clips, args.eval_frames, np.random.default_rng(1)
            )
        stats_clips = sample_clips(videos, 64, args.frames, rng)
    else:
        train_clips = moving_shapes(args.synthetic, args.frames, args.size, seed=args.seed)
        stats_clips = train_clips[:64]

    if args.init:  # continue a fitted VAE on new videos (e.g. a motion family it never saw)
        model = LightVAE.from_checkpoint(args.init, frozen=False)
        wanted = {"widths": list(args.widths), "blocks": args.blocks, "z_dim": args.z_dim}
        have = {"widths": list(model.config["widths"]), "blocks": model.config.get("blocks", 1),
                "z_dim": model.config["z_dim"]}  # fmt: skip
        if have != wanted:
            raise ValueError(f"--init {args.init} has {have}; --widths / --blocks / --z-dim say {wanted}: pass the same")
        model = grow_decoder(model, args.refine_blocks)
    else:
        model = LightVAE(widths=args.widths, blocks=args.blocks, z_dim=args.z_dim, refine_blocks=args.refine_blocks or 0)
    if args.decoder_only:  # the encoder and the latent statistics stay: latents made with --init stay valid
        model.requires_grad_(False)
        model.decoder_parts().requires_grad_(True)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    start = time.time()
    bar = tqdm(range(args.steps), desc="fit light VAE", unit="step")
    model.train()
    for step in bar:
        if videos is not None:
            batch = sample_clips(videos, args.batch, args.frames, rng)
        else:
            batch = train_clips[rng.integers(0, len(train_clips), args.batch)]
        loss, mse = model.reconstruction_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0:
            bar.set_postfix(
                loss=f"{loss.item():.4f}", psnr=f"{10 * math.log10(4 / max(mse.item(), 1e-12)):.2f}"
            )
    train_seconds = time.time() - start

    if not args.decoder_only:
        model.set_latent_stats(*latent_stats(model, stats_clips))
    metrics = {f"heldout_synthetic_{k}": v for k, v in evaluate(model, held_out).items()}
    if held_out_files is not None:
        metrics.update({f"heldout_files_{k}": v for k, v in evaluate(model, held_out_files).items()})
    metrics["train_seconds"] = train_seconds
    logger.info("metrics: %s", {k: round(v, 3) for k, v in metrics.items()})
    extra = {
        "metrics": metrics,
        "train": {k: (v if not isinstance(v, Path) else str(v)) for k, v in vars(args).items()},
    }
    path = model.save(args.out, extra=extra)
    grid_path = path.with_suffix(".recon.png")
    write_grid(model, held_out, grid_path)
    logger.info(
        "wrote %s, %s and %s (held-out originals / reconstructions)",
        path,
        path.with_suffix(".json"),
        grid_path,
    )
    return metrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output .safetensors (the .json config goes next to it)")
    parser.add_argument("--videos", nargs="*", default=None, help="mp4 glob patterns or directories")
    parser.add_argument(
        "--synthetic", type=int, default=512, help="generated training clips when no --videos"
    )
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=9, help="training clip length, 4k+1")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 96],
                        help="3 widths: 8x spatial compression (the Wan factor); 2 widths: 4x")  # fmt: skip
    parser.add_argument("--blocks", type=int, default=1, help="residual blocks per level")
    parser.add_argument("--refine-blocks", type=int, default=None, help="extra decoder blocks at the finest level "
                        "(default 0, or --init's); with --init, added blocks start as the identity")
    parser.add_argument("--z-dim", type=int, default=16, help="latent channels (16: Wan 2.1's; the denoiser's "
                        "latent_dim must match)")
    parser.add_argument("--eval-clips", type=int, default=32)
    parser.add_argument("--eval-frames", type=int, default=17)
    parser.add_argument("--max-frames", type=int, default=200, help="frames read per video file")
    parser.add_argument("--init", default=None, help="start from this fitted light VAE (.safetensors, its .json "
                        "next to it) instead of a fresh one; --widths / --blocks / --z-dim must match it")
    parser.add_argument("--decoder-only", action="store_true", help="with --init: train the decoder alone; the "
                        "encoder and latent statistics stay --init's, so latents and models made with it stay valid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if not str(args.out).endswith(".safetensors"):
        parser.error(f"--out must end in .safetensors, got {args.out}")
    if args.decoder_only and not args.init:
        parser.error("--decoder-only trains the decoder of a fitted VAE: pass --init")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return fit(args)


if __name__ == "__main__":
    main()
