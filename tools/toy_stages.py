"""The stages of the toy-world demos (tools/toy_demo.py, tools/pretrain_toy.py): one function per stage from world
generation to sampling, for a budget of tools/toy_budgets.py. Each stage writes <out>/<stage>/stage.json last (settings signature,
seconds, results) and is skipped on a rerun when that record says done with the same settings.
"""


from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from scail_lab.data.parallel import parallel_map  # noqa: E402
from scail_lab.files import atomic_write_bytes  # noqa: E402
from tools.toy_budgets import SPLITS, VAE_FILE, Budget  # noqa: E402

log = logging.getLogger("toy_stages")
# ---------------------------------------------------------------------------------------------- stages


def write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, default=str).encode())


def rebase_paths(value, old: str, new: str):
    """`value` (JSON: dicts, lists, strings) with every string path under folder `old` moved under `new`."""
    if isinstance(value, dict):
        return {k: rebase_paths(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [rebase_paths(v, old, new) for v in value]
    if isinstance(value, str) and (value == old or value.startswith(old + os.sep)):
        return new + value[len(old):]
    return value


def run_stage(out: Path, name: str, signature: dict, work: Callable[[Path], dict]) -> dict:
    """Run `work(stage_dir)` unless <out>/<name>/stage.json records a finished run with `signature`.

    A stage whose record is missing or says "running" with the same signature resumes in place; one whose
    settings changed starts from an empty folder (its tools would otherwise keep stale files), so a hard-linked copy
    of a finished run folder (`cp -al runs/toy runs/toy_t1`, no disk for the shared stages) never writes into the
    original's files. The record keeps the run folder it was written in: a copy reads its results' paths inside
    the copy, not the original.
    """
    signature = json.loads(json.dumps(signature))  # as stored (tuples become lists), so reruns compare equal
    folder = out / name
    marker = folder / "stage.json"
    if marker.is_file():
        record = json.loads(marker.read_text())
        if record.get("signature") == signature and record.get("status") == "done":
            log.info("[%s] done before (%.0f s): skipped", name, record.get("seconds", 0.0))
            written_in, here = record.get("out"), str(out.resolve())
            if written_in and written_in != here:
                record["result"] = rebase_paths(record.get("result"), written_in, here)
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
        "out": str(out.resolve()),
        "result": result,
    }
    write_json(marker, record)
    log.info("[%s] finished in %.0f s", name, record["seconds"])
    return record


Job = tuple[Path, str, dict, Callable[[Path], dict]]  # run_stage's arguments


def _run_job(job: Job) -> dict:
    return run_stage(*job)


def run_stages(jobs: Sequence[Job], workers: int = 1) -> list[dict]:
    """run_stage for each job, in order (parallel_map: worker processes when workers > 1)."""
    return parallel_map(_run_job, jobs, workers)


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
        f"interface={budget.interface}",  # before the pose grid: the group replaces model.interface
        f"model.interface.pose_downsample={budget.pose_downsample}",
        f"vae.path={vae_path}",
    ]


def stage_world(folder: Path, budget: Budget, seed: int, splits: Sequence[str] = SPLITS, workers: int = 1) -> dict:
    """The world's folders and shards, for `splits` only (("test",): just the test folders, for evaluation;
    ("train",): just training pairs); rendered in `workers` processes (the world does not depend on it)."""
    from tools import make_synthetic

    b = budget
    n = {s: count if s in splits else 0 for s, count in zip(SPLITS, (b.num_train, b.num_val, b.num_test), strict=True)}
    test_only = "train" not in splits and "val" not in splits
    make_synthetic.main([
        "--out", str(folder), "--train", str(n["train"]), "--val", str(n["val"]), "--test", str(n["test"]),
        "--height", str(b.size), "--width", str(b.size), "--frames", str(b.frames), "--fps", str(b.fps),
        "--seed", str(seed), "--p-two-characters", str(b.p_two_characters), "--p-pan", str(b.p_pan),
        "--samples-per-shard", "64", "--workers", str(max(1, workers)),
        "--families", *b.families, *(["--format", "folders"] if test_only else []),
    ])  # fmt: skip
    counts = {s: len(list((folder / "folders" / s).glob(f"{s}_*"))) for s in SPLITS}
    return {"samples": counts, "contact_sheet": str(folder / "contact_sheet.png")}


def stage_vae(folder: Path, world: Path, budget: Budget, seed: int, source: Path | None = None) -> dict:
    """Fit on the train split's target and driving videos (`source`: copy that fitted VAE, and its .json, instead);
    PSNR on the (unseen) test targets."""
    from tools import fit_light_vae as fit

    b = budget
    path = folder / VAE_FILE
    train = world / "folders" / "train"
    if source is not None:
        shutil.copyfile(source, path)
        shutil.copyfile(source.with_suffix(".json"), path.with_suffix(".json"))
    metrics = None if source is not None else fit.main([
        "--out", str(path), "--videos", str(train / "*" / "target.mp4"), str(train / "*" / "rendered_v2.mp4"),
        "--steps", str(b.vae_steps), "--batch", str(b.vae_batch), "--frames", str(b.vae_frames),
        "--size", str(b.size), "--lr", str(b.vae_lr), "--widths", *(str(w) for w in b.vae_widths),
        "--blocks", str(b.vae_blocks),
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


def stage_latents(folder: Path, world: Path, budget: Budget, vae_path: Path,
                  splits: Sequence[str] = ("train", "val"), workers: int = 1) -> dict:  # fmt: skip
    """Latent shards of `splits`; with workers > 1 each of that many one-thread processes encodes every
    workers-th pixel shard (the latents do not depend on it)."""
    from scail_lab.data.caching import make_latent_shards

    cacher = _latent_cacher(budget, vae_path)
    counts = {}
    for split in splits:
        if workers > 1:
            parallel_map(partial(_latent_part, folder / split, world / "shards" / split, budget, vae_path, workers),
                         list(range(workers)), workers)  # fmt: skip
        report = make_latent_shards(cacher, folder / split,
                                    shards=str(world / "shards" / split))  # with workers > 1: the report of all parts
        counts[split] = {"samples": report["num_samples"], "skipped": report["num_skipped"]}
    return counts


def _latent_cacher(budget: Budget, vae_path: Path):
    from scail_lab.build import build_encoder, build_model, data_mask_scheme
    from scail_lab.data import FrameSampling, LatentCacher, ResolutionBuckets

    cfg = compose_config("train", model_overrides(budget, vae_path))
    model = build_model(cfg)
    encoder = build_encoder(cfg, model)  # the very encoders training and sampling use
    return LatentCacher(
        vae=encoder.vae, mask_scheme=data_mask_scheme(model), text_encoder=encoder.text_encoder,
        image_encoder=encoder.image_encoder, sampling=FrameSampling(frame_buckets=(budget.frames,), random_start=False),
        buckets=ResolutionBuckets(sizes=((budget.size, budget.size),)), pose_downsample=budget.pose_downsample,
    )  # fmt: skip


def _latent_part(out: Path, shards: Path, budget: Budget, vae_path: Path, num_parts: int, part: int) -> None:
    from scail_lab.data.caching import make_latent_shards

    make_latent_shards(_latent_cacher(budget, vae_path), out, shards=str(shards), part=part, num_parts=num_parts,
                       progress=False)  # fmt: skip


def latents_name(pose_downsample: int) -> str:
    """The latent-shard folder of a run: `latents` (SCAIL-2's half-resolution driving latents) or `latents_pose<d>`."""
    return "latents" if pose_downsample == 2 else f"latents_pose{pose_downsample}"


def train_overrides(
    budget: Budget, vae_path: Path, data: Path, data_kind: str, run_dir: Path, seed: int,
    extra_shards: Sequence[Path] = (),
) -> list[str]:
    """`extra_shards`: further latent training shards mixed into the budget's own (the fine-tune's replay pairs)."""
    b = budget
    if extra_shards and data_kind != "latent":
        raise ValueError("extra training shards need data_kind='latent'")
    if data_kind == "latent":
        latents = data / latents_name(b.pose_downsample)
        shards = ",".join(f"'{p}'" for p in (latents / "train", *extra_shards))
        source = ["data=latent", f"data.shards=[{shards}]", "data@val_data=latent",
                  f"val_data.shards={latents / 'val'}"]  # fmt: skip
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
        f"optimizer.lr={b.lr}", f"optimizer.warmup_steps={b.warmup_steps}", f"trainer.precision={b.precision}",
        f"objective.region_weight={b.region_weight}", f"objective.sigma_sampler.mean={b.sigma_mean}",
        f"checkpointing.every_n_steps={max(1, b.val_every)}", "checkpointing.keep=1",
        f"seed={seed}", f"+output_dir={run_dir}", "logging.wandb.enabled=false",
    ]  # fmt: skip


def git_commit() -> str | None:
    """The repository's HEAD commit (None outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None


def stage_train(
    folder: Path, out: Path, budget: Budget, vae_path: Path, data_kind: str, seed: int, extra: Sequence[str] = (),
    extra_shards: Sequence[Path] = (),
) -> dict:
    """train.train(cfg) with the budget's overrides plus `extra` (e.g. initial weights, LoRA) and `extra_shards`."""
    import train

    overrides = train_overrides(budget, vae_path, out, data_kind, folder, seed, extra_shards)
    cfg = compose_config("train", [*overrides, *extra])
    if (folder / "checkpoints").is_dir():  # a killed run: its newest complete checkpoint
        cfg.resume = "auto"
    commit = git_commit()  # the code training runs with (a bundle written later may be at a later commit)
    start = time.perf_counter()
    metrics = train.train(cfg)
    seconds = time.perf_counter() - start
    weights = folder / "export" / ("lora_comfy.safetensors" if cfg.lora.enabled else "denoiser.safetensors")
    if not weights.is_file():
        raise FileNotFoundError(f"training finished without writing {weights}")
    return {"weights": str(weights), "metrics": metrics, "fit_seconds": seconds, "git_commit": commit,
            "seconds_per_step": seconds / max(1, budget.train_steps), "loss_curve": read_loss_curve(folder)}  # fmt: skip


@torch.no_grad()
def flow_losses(budget: Budget, vae_path: Path, latents: Path, weights: Path | None, seed: int,
                overrides: Sequence[str] = (), sigmas: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9)) -> dict[str, float]:  # fmt: skip
    """{sample key: flow loss} of `weights` (None: the seeded untrained init; `overrides`: config groups such as an
    ablation arm's) on cached latents, averaged over fixed sigmas with noise seeded by the sample key: the same
    inputs for any two models, so differences are paired per sample."""
    import zlib

    from scail_lab.build import build_model
    from scail_lab.data import AugmentConfig, FrameSampling, build_dataloader
    from scail_lab.diffusion.objective import FlowMatchingObjective
    from scail_lab.training.batches import conditions_from_batch

    torch.manual_seed(seed)  # the untrained init: the same draw as training's
    cfg = compose_config("train", [*model_overrides(budget, vae_path), *overrides, f"weights={weights or 'null'}"])
    model = build_model(cfg).eval()
    loader = build_dataloader(shards=str(latents), kind="latent", batch_size=1, shuffle=False,
                              sampling=FrameSampling(frame_buckets=(budget.frames,), random_start=False),
                              augment=AugmentConfig.off(), mask_scheme=model.mask_scheme if model.mask_width else "none")  # fmt: skip
    objective, out = FlowMatchingObjective(), {}
    for batch in loader:
        key = batch["key"][0]
        conditions, x0, history = conditions_from_batch(batch, None, torch.device("cpu"), model.mask_width > 0)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed * 1009 + zlib.crc32(key.encode())))
        losses = [objective(model, conditions, x0, history, sigma=torch.full((1,), s), noise=noise).loss.item()
                  for s in sigmas]  # fmt: skip
        out[key] = float(sum(losses) / len(losses))
    if not out:
        raise ValueError(f"no latents under {latents}")
    return out


def heldout_flow_loss(budget: Budget, vae_path: Path, latents: Path, weights: Path | None, seed: int) -> float:
    """Mean of `flow_losses` over the samples (trained vs untrained in the scratch chain's report)."""
    values = flow_losses(budget, vae_path, latents, weights, seed)
    return float(sum(values.values()) / len(values))


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
    folder: Path, world: Path, budget: Budget, vae_path: Path, weights: Path | None, seed: int,
    lora: Path | None = None, arm_overrides: Sequence[str] = (), lora_strength: float = 1.0,
) -> dict:
    """Sample every test folder of `world` (skipping finished ones) with `weights` (None: the untrained init),
    plus a LoRA merged at `lora_strength`; `arm_overrides` change config groups (interface, rope, mask)."""
    import sample

    tests = sorted(p for p in (world / "folders" / "test").iterdir() if p.is_dir())
    todo = [p for p in tests if not (folder / f"{p.name}.mp4").is_file()]
    overrides = [*model_overrides(budget, vae_path), f"sampler={budget.sampler}", f"sampler.shift={budget.shift}",
                 f"pipeline.num_steps={budget.sample_steps}", f"pipeline.height={budget.size}",
                 f"pipeline.width={budget.size}", "pipeline.progress=false", f"seed={seed}",
                 f"pipeline.precision={'bf16' if budget.precision == 'bf16-mixed' else 'fp32'}",  # autocast as trained
                 f"weights={weights if weights is not None else 'null'}", f"video_quality={budget.video_quality}",
                 *arm_overrides]  # fmt: skip
    if lora is not None:
        overrides.append(f"loras=[{{path: '{lora}', strength: {float(lora_strength)}}}]")
    seconds = 0.0
    if todo:
        cfg = compose_config("sample", [*overrides, f"inputs=[{','.join(str(p) for p in todo)}]"])
        torch.manual_seed(seed)  # the untrained init is seeded (the same draw as training's init)
        start = time.perf_counter()
        sample.run(cfg, folder)
        seconds = time.perf_counter() - start
    return {"num_samples": len(tests), "sampled_now": len(todo), "seconds": seconds,
            "seconds_per_sample": seconds / max(1, len(todo))}  # fmt: skip
