"""The toy-world demo: from nothing to a trained, sampled and evaluated denoiser on a 2-core CPU.

    python tools/toy_demo.py --out runs/toy_small --budget small     # about 10 minutes
    python tools/toy_demo.py --out runs/toy_medium --budget medium   # up to about 45 minutes

Stages (each writes <out>/<stage>/stage.json last and is skipped on a rerun when that record exists with
the same settings; a killed stage resumes where its tools resume: folders, shards, the last checkpoint):
    world    synthetic train/val/test folders + pixel shards (tools/make_synthetic.py)
    vae      the light CPU VAE fitted on train videos, held-out PSNR on test targets (tools/fit_light_vae.py)
    latents  train/val latent shards, so training does no encoder work (tools/make_latent_shards.py)
    train    the denoiser through train.train(cfg) (configs/train.yaml + overrides) -> train/export/
    sample   the test split through sample.run(cfg) with the trained weights, and with untrained weights
    report   baselines, foreground masks, the eval runner, report.md, contact_sheet.png (tools/toy_report.py)
Nothing is downloaded. docs/TOY_WORLD.md describes the stages and the measured results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from scail_lab.data.media import atomic_write_bytes  # noqa: E402

log = logging.getLogger("toy_demo")
SPLITS = ("train", "val", "test")
VAE_FILE = "light_vae.safetensors"


@dataclass(frozen=True)
class Budget:
    """Every size and step count of one demo run."""

    name: str
    # world
    num_train: int
    num_val: int
    num_test: int
    size: int = 64  # pixels (H = W); latents are size / 8
    frames: int = 17
    p_two_characters: float = 0.2
    p_pan: float = 0.3
    # light VAE
    vae_steps: int = 300
    vae_batch: int = 8
    vae_frames: int = 5
    vae_widths: tuple[int, int, int] = (32, 64, 96)
    vae_lr: float = 2e-3
    # denoiser
    dim: int = 64
    ffn_dim: int = 128
    num_heads: int = 4
    num_layers: int = 2
    patch: int = 2  # spatial patch of the denoiser (latent cells per token side)
    train_steps: int = 200
    batch_size: int = 4
    lr: float = 1e-3
    warmup_steps: int = 20
    val_every: int = 100
    # sampling
    sampler: str = "euler"
    sample_steps: int = 8

    def __post_init__(self) -> None:
        """Bad values fail here, before any stage runs."""
        from scail_lab.data.synthetic.world import WorldConfig

        WorldConfig(height=self.size, width=self.size, num_frames=self.frames, p_two_characters=self.p_two_characters,
                    p_pan=self.p_pan)  # fmt: skip
        positive = ("num_train", "num_val", "num_test", "vae_steps", "vae_batch", "dim", "ffn_dim", "num_heads",
                    "num_layers", "train_steps", "batch_size", "val_every", "sample_steps")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"budget field {name} must be >= 1, got {getattr(self, name)}")
        if self.patch not in (1, 2):
            raise ValueError(f"patch must be 1 or 2 (latent grids are size / 8), got {self.patch}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} must be a multiple of num_heads {self.num_heads}")
        if not (REPO / "configs" / "sampler" / f"{self.sampler}.yaml").is_file():
            raise ValueError(f"sampler {self.sampler!r} is not one of configs/sampler/*.yaml")
        if self.lr <= 0 or self.vae_lr <= 0 or self.warmup_steps < 0:
            raise ValueError(
                f"learning rates must be > 0 and warmup_steps >= 0, got {self.lr}, {self.vae_lr}, {self.warmup_steps}"
            )

    def world_args(self) -> dict:
        return {k: getattr(self, k) for k in ("num_train", "num_val", "num_test", "size", "frames",
                                               "p_two_characters", "p_pan")}  # fmt: skip

    def vae_args(self) -> dict:
        return {k: getattr(self, k) for k in ("vae_steps", "vae_batch", "vae_frames", "vae_widths", "vae_lr")}

    def train_args(self) -> dict:
        return {k: getattr(self, k) for k in ("dim", "ffn_dim", "num_heads", "num_layers", "patch", "train_steps",
                                               "batch_size", "lr", "warmup_steps", "val_every")}  # fmt: skip


BUDGETS = {
    # smoke test only (tests/test_toy_demo.py): every stage runs, nothing is learned
    "micro": Budget("micro", num_train=8, num_val=2, num_test=2, vae_steps=4, vae_batch=2, train_steps=4,
                    batch_size=2, warmup_steps=1, val_every=4, sample_steps=2),
    "small": Budget("small", num_train=256, num_val=16, num_test=32, vae_steps=800, vae_lr=4e-3,
                    vae_widths=(16, 32, 64), dim=128, ffn_dim=256, num_layers=4, train_steps=1500, lr=2e-3,
                    val_every=500),
    "medium": Budget("medium", num_train=1024, num_val=16, num_test=64, vae_steps=2500, vae_lr=3e-3,
                     vae_widths=(32, 64, 96), dim=128, ffn_dim=256, num_layers=4, patch=1, train_steps=3000,
                     lr=2e-3, val_every=500),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------- stages


def write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, default=str).encode())


def run_stage(out: Path, name: str, signature: dict, work: Callable[[Path], dict]) -> dict:
    """Run `work(stage_dir)` unless <out>/<name>/stage.json records a finished run with `signature`.

    A stage whose record is missing or says "running" with the same signature resumes in place; one whose
    settings changed starts from an empty folder (its tools would otherwise keep stale files).
    """
    signature = json.loads(json.dumps(signature))  # as stored (tuples become lists), so reruns compare equal
    folder = out / name
    marker = folder / "stage.json"
    if marker.is_file():
        record = json.loads(marker.read_text())
        if record.get("signature") == signature and record.get("status") == "done":
            log.info("[%s] done before (%.0f s): skipped", name, record.get("seconds", 0.0))
            return record
        if record.get("signature") != signature:
            log.warning("[%s] settings changed since the last run: starting this stage again", name)
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"signature": signature, "status": "running"})
    log.info("[%s] running", name)
    start = time.perf_counter()
    result = work(folder)
    record = {
        "signature": signature,
        "status": "done",
        "seconds": time.perf_counter() - start,
        "result": result,
    }
    write_json(marker, record)
    log.info("[%s] finished in %.0f s", name, record["seconds"])
    return record


def compose_config(name: str, overrides: Sequence[str]) -> DictConfig:
    """configs/<name>.yaml with Hydra overrides (no Hydra run directory, no working-directory change)."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def model_overrides(budget: Budget, vae_path: Path) -> list[str]:
    """The denoiser size and the fitted VAE: the same in training and sampling."""
    return [
        f"model.config.dim={budget.dim}",
        f"model.config.ffn_dim={budget.ffn_dim}",
        f"model.config.num_heads={budget.num_heads}",
        f"model.config.num_layers={budget.num_layers}",
        f"model.config.patch_size=[1,{budget.patch},{budget.patch}]",
        f"vae.path={vae_path}",
    ]


def stage_world(folder: Path, budget: Budget, seed: int) -> dict:
    from tools import make_synthetic

    b = budget
    make_synthetic.main([
        "--out", str(folder), "--train", str(b.num_train), "--val", str(b.num_val), "--test", str(b.num_test),
        "--height", str(b.size), "--width", str(b.size), "--frames", str(b.frames), "--seed", str(seed),
        "--p-two-characters", str(b.p_two_characters), "--p-pan", str(b.p_pan), "--samples-per-shard", "64",
    ])  # fmt: skip
    counts = {s: len(list((folder / "folders" / s).glob(f"{s}_*"))) for s in SPLITS}
    return {"samples": counts, "contact_sheet": str(folder / "contact_sheet.png")}


def stage_vae(folder: Path, world: Path, budget: Budget, seed: int) -> dict:
    """Fit on the train split's target and driving videos; PSNR on the (unseen) test targets."""
    from tools import fit_light_vae as fit

    b = budget
    path = folder / VAE_FILE
    train = world / "folders" / "train"
    metrics = fit.main([
        "--out", str(path), "--videos", str(train / "*" / "target.mp4"), str(train / "*" / "rendered_v2.mp4"),
        "--steps", str(b.vae_steps), "--batch", str(b.vae_batch), "--frames", str(b.vae_frames),
        "--size", str(b.size), "--lr", str(b.vae_lr), "--widths", *(str(w) for w in b.vae_widths),
        "--eval-frames", str(b.frames), "--seed", str(seed),
    ])  # fmt: skip
    from scail_lab.encoders.light_vae import LightVAE

    model = LightVAE.from_checkpoint(path)
    test_targets = fit.find_videos([str(world / "folders" / "test" / "*" / "target.mp4")])
    videos = fit.load_videos(test_targets, b.size, b.frames, b.frames)
    clips = torch.stack([torch.from_numpy(v).permute(3, 0, 1, 2).float() / 127.5 - 1.0 for v in videos])
    test = fit.evaluate(model, clips)
    return {"path": str(path), "test_target_psnr": test["psnr"], "test_target_psnr_frame0": test["psnr_frame0"],
            "fit_metrics": metrics}  # fmt: skip


def stage_latents(folder: Path, world: Path, budget: Budget, vae_path: Path) -> dict:
    from scail_lab.build import build_encoder, build_model, data_mask_scheme
    from scail_lab.data import FrameSampling, LatentCacher, ResolutionBuckets
    from scail_lab.data.caching import make_latent_shards

    cfg = compose_config("train", model_overrides(budget, vae_path))
    model = build_model(cfg)
    encoder = build_encoder(cfg, model)  # the very encoders training and sampling use
    cacher = LatentCacher(
        vae=encoder.vae, mask_scheme=data_mask_scheme(model), text_encoder=encoder.text_encoder,
        image_encoder=encoder.image_encoder, sampling=FrameSampling(frame_buckets=(budget.frames,), random_start=False),
        buckets=ResolutionBuckets(sizes=((budget.size, budget.size),)),
    )  # fmt: skip
    counts = {}
    for split in ("train", "val"):
        report = make_latent_shards(cacher, folder / split, shards=str(world / "shards" / split))
        counts[split] = {"samples": report["num_samples"], "skipped": report["num_skipped"]}
    return counts


def train_overrides(
    budget: Budget, vae_path: Path, data: Path, data_kind: str, run_dir: Path, seed: int
) -> list[str]:
    b = budget
    if data_kind == "latent":
        source = ["data=latent", f"data.shards={data / 'latents' / 'train'}", "data@val_data=latent",
                  f"val_data.shards={data / 'latents' / 'val'}"]  # fmt: skip
    else:
        source = [f"data.shards={data / 'world' / 'shards' / 'train'}", "data@val_data=synthetic",
                  f"val_data.shards={data / 'world' / 'shards' / 'val'}", f"data.buckets.sizes=[[{b.size},{b.size}]]"]  # fmt: skip
    val = ["val_data.shuffle=false", "val_data.num_workers=0", "val_data.batch_size=2"]
    val += [f"val_data.augment.{k}=0.0" for k in ("driving_aug_e2e", "driving_aug_pose", "history_continuation",
                                                  "history", "text_dropout")]  # fmt: skip
    return [
        *model_overrides(b, vae_path), *source, *val,
        f"data.batch_size={b.batch_size}", "data.num_workers=0", f"data.sampling.frame_buckets=[{b.frames}]",
        f"trainer.max_steps={b.train_steps}", f"trainer.val_check_interval={b.val_every}",
        "trainer.limit_val_batches=4", f"trainer.log_every_n_steps={max(1, min(10, b.train_steps // 4))}",
        f"optimizer.lr={b.lr}", f"optimizer.warmup_steps={b.warmup_steps}",
        f"checkpointing.every_n_steps={max(1, b.val_every)}", "checkpointing.keep=1",
        f"seed={seed}", f"+output_dir={run_dir}", "logging.wandb.enabled=false",
    ]  # fmt: skip


def stage_train(folder: Path, out: Path, budget: Budget, vae_path: Path, data_kind: str, seed: int) -> dict:
    import train

    cfg = compose_config("train", train_overrides(budget, vae_path, out, data_kind, folder, seed))
    last = folder / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("[train] resuming from %s", last)
        cfg.resume = str(last)
    start = time.perf_counter()
    metrics = train.train(cfg)
    seconds = time.perf_counter() - start
    weights = folder / "export" / "denoiser.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"training finished without writing {weights}")
    return {"weights": str(weights), "metrics": metrics, "fit_seconds": seconds,
            "seconds_per_step": seconds / max(1, budget.train_steps), "loss_curve": read_loss_curve(folder)}  # fmt: skip


def read_loss_curve(run_dir: Path) -> list[dict]:
    """(step, train/loss, val/loss) rows from the CSV logger's metrics.csv."""
    import csv

    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return []
    rows = []
    with path.open() as handle:
        for row in csv.DictReader(handle):
            keep = {k: float(row[k]) for k in ("train/loss", "val/loss") if row.get(k)}
            if keep:
                rows.append({"step": int(row["step"]), **keep})
    return rows


def stage_sample(
    folder: Path, world: Path, budget: Budget, vae_path: Path, weights: Path | None, seed: int
) -> dict:
    """Sample every test folder (skipping finished ones) with `weights` (None: the untrained init)."""
    import sample

    tests = sorted(p for p in (world / "folders" / "test").iterdir() if p.is_dir())
    todo = [p for p in tests if not (folder / f"{p.name}.mp4").is_file()]
    overrides = [*model_overrides(budget, vae_path), f"sampler={budget.sampler}",
                 f"pipeline.num_steps={budget.sample_steps}", f"pipeline.height={budget.size}",
                 f"pipeline.width={budget.size}", "pipeline.progress=false", f"seed={seed}",
                 f"weights={weights if weights is not None else 'null'}"]  # fmt: skip
    seconds = 0.0
    if todo:
        cfg = compose_config("sample", [*overrides, f"inputs=[{','.join(str(p) for p in todo)}]"])
        torch.manual_seed(seed)  # the untrained init is seeded (the same draw as training's init)
        start = time.perf_counter()
        sample.run(cfg, folder)
        seconds = time.perf_counter() - start
    return {"num_samples": len(tests), "sampled_now": len(todo), "seconds": seconds,
            "seconds_per_sample": seconds / max(1, len(todo))}  # fmt: skip


# ---------------------------------------------------------------------------------------------- main


def run_demo(out: Path, budget: Budget, data_kind: str = "latent", seed: int = 0) -> dict:
    """Every stage in order; returns the stage records (also in <out>/<stage>/stage.json)."""
    from tools import toy_report

    if data_kind not in ("latent", "pixel"):
        raise ValueError(f"data kind must be 'latent' or 'pixel', got {data_kind!r}")
    out = out.resolve()  # manifests and stage records hold absolute paths
    out.mkdir(parents=True, exist_ok=True)
    sig = {"world": {**budget.world_args(), "seed": seed}}
    records = {"world": run_stage(out, "world", sig["world"], lambda f: stage_world(f, budget, seed))}
    world = out / "world"
    sig["vae"] = {**sig["world"], **budget.vae_args()}
    records["vae"] = run_stage(out, "vae", sig["vae"], lambda f: stage_vae(f, world, budget, seed))
    vae_path = out / "vae" / VAE_FILE
    if data_kind == "latent":
        sig["latents"] = {**sig["vae"], "size": budget.size, "frames": budget.frames}
        records["latents"] = run_stage(out, "latents", sig["latents"],
                                       lambda f: stage_latents(f, world, budget, vae_path))  # fmt: skip
    sig["train"] = {**sig["vae"], **budget.train_args(), "data": data_kind}
    records["train"] = run_stage(out, "train", sig["train"],
                                 lambda f: stage_train(f, out, budget, vae_path, data_kind, seed))  # fmt: skip
    weights = out / "train" / "export" / "denoiser.safetensors"
    sig["sample"] = {**sig["train"], "sampler": budget.sampler, "sample_steps": budget.sample_steps}
    for run, w in (("model", weights), ("untrained", None)):
        records[f"sample_{run}"] = run_stage(out, f"samples_{run}", sig["sample"],
                                             lambda f, w=w: stage_sample(f, world, budget, vae_path, w, seed))  # fmt: skip
    sig["report"] = sig["sample"]
    records["report"] = run_stage(out, "report", sig["report"],
                                  lambda f: toy_report.build_report(f, out, budget, records, vae_path))  # fmt: skip
    return records


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="everything goes under this folder")
    p.add_argument("--budget", default="small", choices=sorted(BUDGETS), help="micro is a smoke test")
    p.add_argument("--data", default="latent", choices=("latent", "pixel"),
                   help="train on latent shards (no encoder work per step) or pixel shards")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 1 is fastest on a shared 2-core machine (docs/TOY_WORLD.md)")  # fmt: skip
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="override budget fields, e.g. --set train_steps=400 lr=2e-3")  # fmt: skip
    return p.parse_args(argv)


def with_overrides(budget: Budget, items: Sequence[str]) -> Budget:
    """Budget fields from FIELD=VALUE strings, converted to the field's type."""
    fields = {f.name: f for f in dataclasses.fields(Budget)}
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields or key == "name":
            raise ValueError(
                f"--set expects FIELD=VALUE with FIELD one of {sorted(set(fields) - {'name'})}, got {item!r}"
            )
        current = getattr(budget, key)
        try:
            changes[key] = (
                tuple(int(v) for v in value.split(","))
                if isinstance(current, tuple)
                else type(current)(value)
            )
        except ValueError as err:
            raise ValueError(
                f"--set {item!r}: {key} takes a {type(current).__name__}, got {value!r}"
            ) from err
    return dataclasses.replace(budget, **changes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    budget = with_overrides(BUDGETS[args.budget], args.set)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        start = time.perf_counter()
        records = run_demo(args.out, budget, args.data, args.seed)
    finally:
        torch.set_num_threads(threads)  # called in-process (tests): leave the caller's setting as it was
    log.info(
        "demo finished in %.0f s: %s", time.perf_counter() - start, records["report"]["result"]["report"]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
