"""Budgets of the toy-world demos (tools/toy_demo.py, tools/pretrain_toy.py, tools/ablate.py, tools/compare_bases.py):
every size, step count and setting of one run (`Budget`: a world, VAE and denoiser from scratch or continued;
`Finetune`: the shipped base fine-tuned on the held-out motion family), the named ones, and the shipped bundles'
file names. tools/toy_stages.py runs the stages they describe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scail_lab.data import media
from scail_lab.hardware import cpu_has_bf16_units

REPO = Path(__file__).resolve().parents[1]
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


PARTIAL_FINETUNE = ("patch_embedding.*",)  # the default full fine-tune trains only the driving clip's way in. On the
# seed-1 dev world (3 training runs x 3 noise seeds, merge 0.5) the regular families' joint error +0.05 px n.s. against
# every parameter's +0.10 worse; the new family's -0.16 against -0.20 px, both better (docs/TOY_WORLD.md)


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
    train_steps: int = 300  # on the 16-fps base: both fine-tune criteria, about 9 min (docs/TOY_WORLD.md)
    batch_size: int = 4
    lr: float | None = None  # None: 2e-4 for a full fine-tune, 1e-3 for a LoRA (`learning_rate`)
    warmup_steps: int = 20
    val_every: int = 200
    lora: bool = False
    lora_rank: int = 32
    trainable: tuple[str, ...] | None = None  # a full fine-tune of only the parameters matching these patterns (the
    # training config's `trainable`); `--set trainable=all`: every parameter. None: PARTIAL_FINETUNE for a full
    # fine-tune, the adapters for a LoRA (`trainable_patterns`)
    precision: str = "auto"  # bf16-mixed where the CPU has bf16 units (training 2x faster there), else 32-true
    replay: int = 256  # pairs of the base's own families mixed into training (0: none; 32 forgot). 256 chosen on
    # the seed-1 dev world for version 7: the regular families' joint error +0.12 px n.s. against +0.21 worse at 128
    region_weight: float = 8.0  # objective.region_weight: loss weight 1 + w on the characters' latent cells. 8 chosen on
    # the seed-1 dev world for version 7 (the new family's joint error 0 / 2 / 4 / 8: +0.05 n.s., -0.11, -0.15, -0.18 px)
    sigma_mean: float = 1.0  # objective.sigma_sampler.mean (Budget.sigma_mean): noisier training levels, chosen on
    # the seed-1 dev world over two training seeds (family joint error -0.13 px vs base; 0.0 left it +0.03)
    merge: float = 0.5  # weight-space ensemble (WiSE-FT): sample with base + merge * (fine-tuned - base); 1: as trained.
    # Chosen on the seed-1 dev world, each test clip sampled with 3 noise seeds: the regular families' joint error at
    # 0.7 / 0.6 / 0.5: +0.12 worse / +0.09 n.s. / +0.07 n.s., the new family's -0.24 / -0.21 / -0.18 px, all better
    # (0.7 before: chosen with one noise seed, where 1.0 set the regular families' pose back 0.23 px)
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
        if self.trainable is not None:  # --set trainable=all (or empty): every parameter
            object.__setattr__(self, "trainable", tuple(p for p in self.trainable if p and p != "all"))
            if self.trainable and self.lora:
                raise ValueError(f"fine-tune field trainable={','.join(self.trainable)} selects parameters of a full "
                                 "fine-tune; a LoRA adapts the blocks' linear layers (set trainable=all with lora=true)")
        media.video_quality(self.video_quality)

    @property
    def trainable_patterns(self) -> tuple[str, ...]:
        """The parameters a full fine-tune trains: `trainable`, by default PARTIAL_FINETUNE; () trains every one (and
        a LoRA its adapters)."""
        if self.trainable is None:
            return () if self.lora else PARTIAL_FINETUNE
        return self.trainable

    @property
    def learning_rate(self) -> float:
        """`lr`, or by default 2e-4 for a full fine-tune of every parameter and 1e-3 for a LoRA (chosen on the seed-1
        dev world at 16 fps, 300 steps, merge 0.7: a LoRA at 2e-4 left the family's joint error n.s., -0.08 px; at 1e-3
        -0.19 px better) or a fine-tune of some parameters (`trainable`; the rate its dev and test runs used, not
        tuned)."""
        return self.lr if self.lr is not None else (1e-3 if self.lora or self.trainable_patterns else 2e-4)

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
        """Overrides on top of the budget's: the base weights, the trainable parameters, and LoRA when chosen."""
        out = [f"weights={weights}"]
        if self.trainable_patterns:
            out.append(f"trainable=[{','.join(self.trainable_patterns)}]")
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
            elif current is None:  # a setting resolved later (Finetune.lr: a number; Finetune.trainable: patterns)
                changes[key] = tuple(value.split(",")) if str(fields[key].type).startswith("tuple") else float(value)
            else:
                changes[key] = type(current)(value)
        except ValueError as err:
            kind = "float" if current is None else type(current).__name__
            raise ValueError(f"--set {item!r}: {key} takes a {kind}, got {value!r}") from err
    return dataclasses.replace(budget, **changes)
