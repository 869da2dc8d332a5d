"""The stages of the toy-world demos (tools/toy_demo.py, tools/pretrain_toy.py): budgets, and one function per
stage from world generation to sampling. Each stage writes <out>/<stage>/stage.json last (settings signature,
seconds, results) and is skipped on a rerun when that record says done with the same settings.
"""


from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from scail_lab.data.parallel import parallel_map  # noqa: E402
from scail_lab.files import atomic_write_bytes  # noqa: E402
from scail_lab.hardware import cpu_has_bf16_units  # noqa: E402

log = logging.getLogger("toy_stages")
SPLITS = ("train", "val", "test")
HOLDOUT_FAMILY = "jump"  # the motion family the shipped base never sees; the fine-tuning demo teaches it
BASE_FAMILIES = ("walk", "wave", "squat", "turn", "dance")
VAE_FILE = "light_vae.safetensors"
JOINT_FILE = "joint_estimator.safetensors"
BASE_WEIGHTS = "denoiser.safetensors"
BUNDLE = REPO / "data" / "toy_base"  # the shipped toy base: denoiser, light VAE, joint estimator, manifest.json
FINETUNE_BUNDLE = REPO / "data" / "toy_base_16fps"  # its 16-fps continuation (same VAE, estimator): the fine-tune demo's base
PRECISIONS = ("auto", "32-true", "bf16-mixed")  # Lightning precisions a budget may name; auto: resolve_precision


def resolve_precision(precision: str) -> str:
    """A budget's precision as Lightning takes it: `auto` -> bf16-mixed on a CPU with bf16 units, else 32-true."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16-mixed" if cpu_has_bf16_units() else "32-true"


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
    fps: float = 8.0  # motion is in seconds: more fps = less motion between frames (and within a latent's 4 frames)
    p_two_characters: float = 0.2
    p_pan: float = 0.3
    families: tuple[str, ...] = BASE_FAMILIES  # motion families of the world (the held-out one is left out)
    # light VAE
    vae_steps: int = 300
    vae_batch: int = 8
    vae_frames: int = 5
    vae_widths: tuple[int, ...] = (64, 128)  # 2 widths: 4x spatial compression; 3: 8x (the Wan factor)
    vae_blocks: int = 1
    vae_lr: float = 2e-3
    # denoiser
    dim: int = 64
    ffn_dim: int = 128
    num_heads: int = 4
    num_layers: int = 2
    patch: int = 2  # spatial patch of the denoiser (latent cells per token side)
    pose_downsample: int = 2  # interface pose grid = latent grid / this (2: SCAIL-2; 1: full-resolution pose tokens)
    interface: str = "scail2"  # configs/interface/<name>.yaml: scail2 | scail1 | channel_concat
    train_steps: int = 200
    batch_size: int = 4
    lr: float = 1e-3
    warmup_steps: int = 20
    val_every: int = 100
    precision: str = "32-true"  # Lightning precision: 32-true | bf16-mixed (CPU autocast) | auto (resolve_precision)
    region_weight: float = 0.0  # objective.region_weight: extra loss weight on the characters' latent cells
    sigma_mean: float = 0.0  # objective.sigma_sampler.mean: logit-normal mean of the training noise levels (> 0: noisier)
    init: str = ""  # initial denoiser weights (safetensors; same sizes), e.g. a shipped base to continue; "" = scratch
    concat_init: str = "pose"  # an in-context init continued as channel concat: its driving block (DRIVING_INITS)
    # sampling
    sampler: str = "euler"
    shift: float = 5.0
    sample_steps: int = 8
    video_quality: str = "18"  # samples and baselines as sample.py writes them: a yuv420p CRF, or lossless (the
    # exact frames: the metrics then measure the model, not the codec)

    def __post_init__(self) -> None:
        """Bad values fail here, before any stage runs."""
        from scail_lab.data import media
        from scail_lab.data.synthetic.world import WorldConfig
        from scail_lab.model.interfaces import DRIVING_INITS, check_pose_downsample

        WorldConfig(height=self.size, width=self.size, num_frames=self.frames, fps=self.fps,
                    p_two_characters=self.p_two_characters, p_pan=self.p_pan, families=self.families)  # fmt: skip
        if len(self.vae_widths) not in (2, 3):
            raise ValueError(f"vae_widths must be 2 (4x) or 3 (8x) widths, got {self.vae_widths}")
        object.__setattr__(self, "precision", resolve_precision(self.precision))  # stage signatures hold the resolved one
        positive = ("num_train", "num_val", "num_test", "vae_steps", "vae_batch", "dim", "ffn_dim", "num_heads",
                    "num_layers", "train_steps", "batch_size", "val_every", "sample_steps")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"budget field {name} must be >= 1, got {getattr(self, name)}")
        if self.patch not in (1, 2):
            raise ValueError(f"patch must be 1 or 2, got {self.patch}")
        check_pose_downsample(self.pose_downsample)
        if self.concat_init not in DRIVING_INITS:
            raise ValueError(f"concat_init must be one of {DRIVING_INITS}, got {self.concat_init!r}")
        if not (REPO / "configs" / "interface" / f"{self.interface}.yaml").is_file():
            raise ValueError(f"interface {self.interface!r} is not one of configs/interface/*.yaml")

        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} must be a multiple of num_heads {self.num_heads}")
        if not (REPO / "configs" / "sampler" / f"{self.sampler}.yaml").is_file():
            raise ValueError(f"sampler {self.sampler!r} is not one of configs/sampler/*.yaml")
        media.video_quality(self.video_quality)
        if self.lr <= 0 or self.vae_lr <= 0 or self.warmup_steps < 0:
            raise ValueError(
                f"learning rates must be > 0 and warmup_steps >= 0, got {self.lr}, {self.vae_lr}, {self.warmup_steps}"
            )

    def world_args(self) -> dict:
        return {k: getattr(self, k) for k in ("num_train", "num_val", "num_test", "size", "frames", "fps",
                                               "p_two_characters", "p_pan", "families")}  # fmt: skip

    def vae_args(self) -> dict:
        return {k: getattr(self, k) for k in ("vae_steps", "vae_batch", "vae_frames", "vae_widths", "vae_blocks",
                                               "vae_lr")}  # fmt: skip

    def sampling_args(self) -> dict:
        """What a sample stage's signature holds of the budget (video_quality only when not the default, so the
        signatures of runs from before it existed stay as they were)."""
        args = {k: getattr(self, k) for k in ("sampler", "shift", "sample_steps")}
        if self.video_quality != Budget.video_quality:
            args["video_quality"] = self.video_quality
        return args

    def train_args(self) -> dict:
        return {k: getattr(self, k) for k in ("dim", "ffn_dim", "num_heads", "num_layers", "patch", "interface", "train_steps",
                                               "batch_size", "lr", "warmup_steps", "val_every", "precision",
                                               "region_weight", "sigma_mean")}  # fmt: skip


BUDGETS = {
    # smoke test only (tests/test_toy_demo.py): every stage runs, nothing is learned
    "micro": Budget("micro", num_train=8, num_val=2, num_test=2, vae_steps=4, vae_batch=2, vae_widths=(16, 32),
                    train_steps=4, batch_size=2, warmup_steps=1, val_every=4, sample_steps=2),
    "small": Budget("small", num_train=256, num_val=16, num_test=32, vae_steps=800, vae_lr=4e-3,
                    vae_widths=(16, 32, 64), dim=128, ffn_dim=256, num_layers=4, train_steps=1500, lr=2e-3,
                    val_every=500),
    "medium": Budget("medium", num_train=1024, num_val=16, num_test=64, vae_steps=2500, vae_lr=3e-3,
                     vae_widths=(32, 64, 96), dim=128, ffn_dim=256, num_layers=4, patch=1, train_steps=3000,
                     lr=2e-3, val_every=500),
    # one arm of tools/ablate.py (VAE and frame size from the shipped bundle)
    "ablation": Budget("ablation", num_train=1024, num_val=16, num_test=96, dim=128, ffn_dim=512, num_heads=4,
                       num_layers=4, train_steps=2000, batch_size=4, lr=1e-3, warmup_steps=100, val_every=1000),
    # the shipped base (tools/pretrain_toy.py): the recipe docs/TOY_WORLD.md arrived at, run long
    "base": Budget("base", num_train=2048, num_val=16, num_test=64, vae_steps=2500, vae_lr=3e-3,
                   vae_widths=(64, 128), dim=192, ffn_dim=768, num_heads=4, num_layers=6, train_steps=5000,
                   batch_size=4, lr=1e-3, warmup_steps=200, val_every=1000),
}  # fmt: skip


@dataclass(frozen=True)
class Finetune:
    """The fine-tune-on-new-motions demo: pairs of the motion family the shipped base never saw (HOLDOUT_FAMILY).

    World sizes, the VAE, the denoiser's shape and the sampler come from the shipped bundle's budget (its
    manifest.json); these fields set the new data and the fine-tuning run.
    """

    name: str
    num_train: int = 256  # new motion pairs (train identities and scenes, held-out family); 128 left pose worse
    num_val: int = 8
    num_test: int = 80  # held-out family test pairs (test identities, scenes and motions): 64 animate, 16 replace
    num_regular_test: int = 80  # test pairs of the families the base was trained on (the same 64 / 16 split)
    train_steps: int = 300  # on the 16-fps base with merge 0.7: both fine-tune criteria, about 9 min (docs/TOY_WORLD.md)
    batch_size: int = 4
    lr: float | None = None  # None: 2e-4 for a full fine-tune, 1e-3 for a LoRA (`learning_rate`)
    warmup_steps: int = 20
    val_every: int = 200
    lora: bool = False
    lora_rank: int = 32
    precision: str = "auto"  # bf16-mixed where the CPU has bf16 units (training 2x faster there), else 32-true
    replay: int = 128  # pairs of the base's own families mixed into training, against forgetting (0: none; 32 forgot)
    region_weight: float = 0.0  # objective.region_weight: extra loss weight on the characters' latent cells
    sigma_mean: float = 1.0  # objective.sigma_sampler.mean (Budget.sigma_mean): noisier training levels, chosen on
    # the seed-1 dev world over two training seeds (family joint error -0.13 px vs base; 0.0 left it +0.03)
    merge: float = 0.7  # weight-space ensemble (WiSE-FT): sample with base + merge * (fine-tuned - base); 1: as trained.
    # 0.7 chosen on the seed-1 dev world (1.0 set the regular families' pose back 0.23 px, 0.7 kept the new family's gain)
    paste_back: bool = True  # both models sample with pipeline.paste_back: in replacement the driving clip's scene is
    # kept where its mask is white. On the seed-1 dev world, base: PSNR +0.92 dB, mask IoU +0.09 in replacement
    video_quality: str = "lossless"  # samples and baselines as exact frames (Budget.video_quality): the report measures
    # the models, not the codec. At CRF 18 (the from-scratch budgets' and the ablations' setting) the ground truth
    # itself reads mask IoU 0.79, and the fine-tune's pose gain on the new family reads 0.05 px larger

    def __post_init__(self) -> None:
        for name in ("num_train", "num_val", "num_test", "num_regular_test", "train_steps", "batch_size",
                     "val_every", "lora_rank"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"fine-tune field {name} must be >= 1, got {getattr(self, name)}")
        if (self.lr is not None and self.lr <= 0) or self.warmup_steps < 0:
            raise ValueError(f"lr must be > 0 and warmup_steps >= 0, got {self.lr}, {self.warmup_steps}")
        if self.replay < 0:
            raise ValueError(f"fine-tune field replay must be >= 0, got {self.replay}")
        if not 0.0 < self.merge <= 1.0:
            raise ValueError(f"fine-tune field merge must be in (0, 1] (the fine-tune's share of the weights), got {self.merge}")
        object.__setattr__(self, "precision", resolve_precision(self.precision))  # stage signatures hold the resolved one
        from scail_lab.data import media

        media.video_quality(self.video_quality)

    @property
    def learning_rate(self) -> float:
        """`lr`, or by default 2e-4 for a full fine-tune and 1e-3 for a LoRA (chosen on the seed-1 dev world at 16 fps,
        300 steps, merge 0.7: a LoRA at 2e-4 left the family's joint error n.s., -0.08 px; at 1e-3 -0.19 px better)."""
        return self.lr if self.lr is not None else (1e-3 if self.lora else 2e-4)

    def run_budget(self, base: Budget) -> Budget:
        """The base budget with this run's data and optimisation settings (model shape and sampler kept)."""
        return dataclasses.replace(
            base, name=self.name, num_train=self.num_train, num_val=self.num_val, num_test=self.num_test,
            families=(HOLDOUT_FAMILY,), train_steps=self.train_steps, batch_size=self.batch_size, lr=self.learning_rate,
            warmup_steps=self.warmup_steps, val_every=self.val_every, precision=self.precision, init="",
            region_weight=self.region_weight, sigma_mean=self.sigma_mean,
        )  # fmt: skip

    def replay_budget(self, base: Budget) -> Budget:
        """The replay world: `replay` training pairs of the base's own families (stage_world with splits=("train",))."""
        return dataclasses.replace(base, name=f"{self.name}_replay", num_train=self.replay)

    def train_extra(self, weights: Path) -> list[str]:
        """Overrides on top of the budget's: the base weights, and LoRA when chosen."""
        out = [f"weights={weights}"]
        if self.lora:
            out += ["lora.enabled=true", f"lora.rank={self.lora_rank}", f"lora.alpha={float(self.lora_rank)}"]
        return out


FINETUNES = {
    "finetune": Finetune("finetune"),
    "finetune_micro": Finetune("finetune_micro", num_train=4, num_val=2, num_test=2, num_regular_test=2,
                               train_steps=2, batch_size=2, warmup_steps=1, val_every=2, replay=2),
}  # fmt: skip


def budget_from_dict(data: dict) -> Budget:
    """A Budget from its stored form (JSON lists back to tuples)."""
    return Budget(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


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
    settings changed starts from an empty folder (its tools would otherwise keep stale files). The record keeps the
    run folder it was written in: a run folder copied elsewhere (`cp -r runs/toy runs/toy_t1`) reads its results'
    paths inside the copy, not the original.
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



def with_overrides(budget, items: Sequence[str]):
    """A budget (Budget or Finetune) with fields from FIELD=VALUE strings, converted to the field's type."""
    fields = {f.name: f for f in dataclasses.fields(budget)}
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields or key == "name":
            raise ValueError(
                f"--set expects FIELD=VALUE with FIELD one of {sorted(set(fields) - {'name'})}, got {item!r}"
            )
        current = getattr(budget, key)
        try:
            if isinstance(current, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                changes[key] = value.lower() in ("true", "1")
            elif isinstance(current, tuple):
                items = value.split(",")
                changes[key] = tuple(int(v) for v in items) if all(v.lstrip("-").isdigit() for v in items) else tuple(items)
            elif current is None:  # an optional number whose default is resolved later (Finetune.lr)
                changes[key] = float(value)
            else:
                changes[key] = type(current)(value)
        except ValueError as err:
            kind = "float" if current is None else type(current).__name__
            raise ValueError(f"--set {item!r}: {key} takes a {kind}, got {value!r}") from err
    return dataclasses.replace(budget, **changes)
