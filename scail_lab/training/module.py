"""The Lightning shell: batch -> conditions -> objective -> log. Strategy, precision and checkpointing live in
config (train.py) and strategies.py; the model is the same pure nn.Module the pipeline samples with.

Randomness: the noise and sigma of step k come from a generator seeded by (seed, k, data-parallel rank), so a
killed and resumed run draws exactly what the uninterrupted run drew; the global RNG state is also saved (LoRA
dropout).

Sequence parallelism (`sequence_parallel=S` > 1): consecutive groups of S ranks share one batch and split its
tokens (model/sequence_parallel.py). Each rank's gradients are its tokens' share of the full gradient, so the
loss handed to backward is scaled by S to undo the data-parallel average over all ranks; logged losses are not.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from fnmatch import fnmatchcase

import lightning as L
import torch
from torch import Tensor

from scail_lab.conditioning import ConditionEncoder
from scail_lab.data import schema
from scail_lab.diffusion.objective import FlowMatchingObjective
from scail_lab.model.dit import SCAILDiT
from scail_lab.model.sequence_parallel import new_groups
from scail_lab.training.batches import conditions_from_batch
from scail_lab.training.lora import LoraSettings, apply_lora
from scail_lab.training.optim import OptimizerConfig, build_optimizer

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised when the loss is NaN or infinite; the run stops and the last good checkpoint stays."""


class SCAILModule(L.LightningModule):
    def __init__(
        self,
        model: SCAILDiT,
        optimizer: OptimizerConfig,
        objective: FlowMatchingObjective | None = None,
        encoder: ConditionEncoder | None = None,
        lora: LoraSettings | None = None,
        seed: int = 0,
        val_sigmas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9),
        sequence_parallel: int = 1,
        trainable: str | Sequence[str] | None = (),
    ) -> None:
        super().__init__()
        if int(sequence_parallel) < 1:
            raise ValueError(f"sequence_parallel must be >= 1, got {sequence_parallel}")
        self.sequence_parallel = int(sequence_parallel)
        self.lora = lora or LoraSettings()
        trainable = as_patterns(trainable)
        if trainable and self.lora.enabled:
            raise ValueError(f"trainable={list(trainable)} selects parameters of a full fine-tune; with "
                             "lora.enabled=true choose the adapted modules with lora.target_modules")  # fmt: skip
        self.model = apply_lora(model, self.lora) if self.lora.enabled else model
        if self.lora.enabled:
            check_lora_base(self.model)
        if trainable:
            train_only(self.model, trainable)
        self.optimizer_config = optimizer
        self.objective = objective or FlowMatchingObjective()
        self._warned_region = False
        self.encoder = encoder  # plain object: frozen encoders are not part of checkpoints
        self.seed = int(seed)
        if any(not 0.0 < s < 1.0 for s in val_sigmas):
            raise ValueError(f"val_sigmas must lie in (0, 1), got {val_sigmas}")
        self.val_sigmas = tuple(float(s) for s in val_sigmas)
        self.strict_loading = not self.lora.enabled  # LoRA checkpoints hold only the adapters

    # --- helpers ---------------------------------------------------------------------------------------
    @property
    def data_parallel_rank(self) -> int:
        """Ranks of one sequence-parallel group share this (and so their batch and noise)."""
        return self.global_rank // self.sequence_parallel

    def _generator(self, step: int, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, step, self.data_parallel_rank, salt)) % (2**63))

    def configure_model(self) -> None:
        """Sharding strategies that wrap the model here (FSDP2: fully_shard per block); a no-op elsewhere."""
        shard = getattr(self.trainer.strategy, "shard_model", None)
        if shard is not None:
            shard(self.model)

    def setup(self, stage: str) -> None:
        if self.sequence_parallel > 1:  # collective: every rank builds every group
            self.model.enable_sequence_parallel(new_groups(self.sequence_parallel))

    def on_fit_start(self) -> None:
        if self.encoder is not None:
            self.encoder.to(self.device)

    def _conditions(self, batch):
        return conditions_from_batch(batch, self.encoder, self.device, self.model.mask_width > 0)

    # --- steps -------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        conditions, x0, num_history = self._conditions(batch)
        region = batch.get(schema.TARGET_REGION)
        if self.objective.region_weight and region is None and not self._warned_region:
            log.warning("objective.region_weight=%g has no effect: these batches carry no target region (latent "
                        "shards cached from folders with target_mask.mp4 do)", self.objective.region_weight)  # fmt: skip
            self._warned_region = True
        region = None if region is None else region.to(x0)
        out = self.objective(self.model, conditions, x0, num_history, generator=self._generator(self.global_step, 0),
                             region=region)  # fmt: skip
        if not torch.isfinite(out.loss):
            raise NonFiniteLossError(
                f"non-finite loss {out.loss.item()} at step {self.global_step} (batch keys {batch.get('key')}); "
                "stopping; the last saved checkpoint is untouched"
            )
        b = x0.shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=b)
        self.log("train/sigma_mean", out.sigma.mean(), batch_size=b)
        self.log("train/kept_fraction", out.kept_fraction, batch_size=b)
        return out.loss * self.sequence_parallel

    def validation_step(self, batch, batch_idx: int) -> None:
        """Held-out flow loss at fixed sigmas with fixed noise: comparable across runs and steps."""
        conditions, x0, num_history = self._conditions(batch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + batch_idx)
        noise = torch.randn(x0.shape, generator=g).to(x0)
        losses = []
        for s in self.val_sigmas:
            sigma = torch.full((x0.shape[0],), s, device=x0.device)
            out = self.objective(self.model, conditions, x0, num_history, sigma=sigma, noise=noise)
            self.log(f"val/loss_sigma_{s:.1f}", out.loss, batch_size=x0.shape[0])
            losses.append(out.loss)
        self.log("val/loss", torch.stack(losses).mean(), prog_bar=True, batch_size=x0.shape[0])

    # --- optimisation ------------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters (check the LoRA targets or freezing options)")
        optimizer, scheduler = build_optimizer(params, self.optimizer_config)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads:  # DeepSpeed partitions gradients; there the engine's norm is logged after its step
            norms = [torch.linalg.vector_norm(g.float()) for g in grads]  # FSDP2: DTensor norms over all shards
            norms = [n.full_tensor() if hasattr(n, "full_tensor") else n for n in norms]
            self.log("train/grad_norm", torch.linalg.vector_norm(torch.stack(norms)))
        self.log("train/lr", optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        engine = getattr(self.trainer.strategy, "deepspeed_engine", None)
        norm = engine.get_global_grad_norm() if engine is not None else None
        if norm is not None:  # the global (all-partition) norm of the step DeepSpeed just took, before clipping
            self.log("train/grad_norm", float(norm))

    # --- checkpoints ---------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.lora.enabled and "state_dict" in checkpoint:
            trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["torch_rng_state"] = torch.get_rng_state()
        checkpoint["scail_lab"] = {"model": self.model.describe() if hasattr(self.model, "describe") else {},
                                   "lora": vars(self.lora)}  # fmt: skip

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])


def as_patterns(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """The `trainable` setting as a tuple of patterns: a list from the config, or one string (trainable=blocks.0.*
    on the command line)."""
    return (value,) if isinstance(value, str) else tuple(value or ())


def trainable_names(model: torch.nn.Module, patterns: Sequence[str]) -> list[str]:
    """The parameter names (official layout, e.g. `patch_embedding.weight`, `blocks.3.ffn.0.bias`) that match any of
    the fnmatch `patterns`; a pattern that matches none is an error naming it (a typo would train nothing)."""
    return matching_names([n for n, _ in model.named_parameters()], patterns)


def matching_names(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """`names` that match any of the fnmatch `patterns` (trainable_names; also a checkpoint's tensor names, checked
    before the work that precedes training); a pattern that matches none is an error naming it."""
    for pattern in patterns:
        if not any(fnmatchcase(n, pattern) for n in names):
            raise ValueError(f"trainable pattern {pattern!r} matches no parameter of the denoiser (names look like "
                             f"{names[0]!r}, 'blocks.0.self_attn.q.weight', 'head.head.weight')")  # fmt: skip
    return [n for n in names if any(fnmatchcase(n, p) for p in patterns)]


def train_only(model: torch.nn.Module, patterns: Sequence[str]) -> int:
    """Freeze every parameter except those matching `patterns` (a partial full fine-tune); returns how many
    parameter values stay trainable."""
    keep = set(trainable_names(model, patterns))
    params = dict(model.named_parameters())
    for name, param in params.items():
        param.requires_grad_(name in keep)
    count = sum(params[n].numel() for n in keep)
    log.info("training %d of %d parameter tensors (%d values) matching %s", len(keep), len(params), count,
             list(patterns))  # fmt: skip
    return count


def check_lora_base(model: SCAILDiT) -> None:
    """LoRA adapts trained weights. A fresh init has Wan's zero output head, through which no gradient reaches the
    blocks: the adapters would never move. Refuse that before training instead of training nothing."""
    head = getattr(getattr(model, "head", None), "head", None)
    weight = getattr(head, "weight", None)
    if weight is not None and not weight.is_meta and not bool(weight.detach().any()):
        raise ValueError(
            "lora.enabled=true on a denoiser whose output head is all zeros (a fresh init, not trained weights): "
            "no gradient reaches the adapters. Load base weights with weights=... or checkpoint.dir=..."
        )


def tokens_per_sample(x0: Tensor) -> int:
    """Video + reference + pose tokens of one sample for a 2x2 patch (throughput accounting)."""
    _, _, t, h, w = x0.shape
    return (t + 1) * h * w // 4 + t * h * w // 16 if h * w else 0


