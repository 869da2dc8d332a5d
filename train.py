"""Fine-tune the denoiser on motion pairs (Hydra entry point; `train(cfg)` is callable from tests).

    python tools/make_synthetic.py --out data/synthetic          # a toy world with ground truth
    python train.py                                               # tiny model, CPU, synthetic pixel shards
    python train.py data=latent data.shards=/data/latents/train model=scail2_14b weights=... lora.enabled=true \
        trainer.accelerator=gpu trainer.devices=8 trainer.precision=bf16-mixed strategy=deepspeed_zero2
    python train.py -m interface=scail2,channel_concat rope=scail2,shared      # an ablation sweep
    python train.py resume=outputs/<run>/checkpoints/last.ckpt                 # exact resume
    python train.py +output_dir=outputs/<run> resume=auto                        # the run's newest complete checkpoint

Each run directory holds checkpoints/ (Lightning, for resume), export/ (safetensors + config.json for
sampling), csv/ metrics, val_videos/, metrics.json (final metrics, read by the sweep summary) and
data_report.{md,json} (what the loader fed and skipped, and why; per-worker files in data_report/).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from scail_lab.build import build_encoder, build_model, build_pipeline, data_mask_scheme, plain
from scail_lab.data.report import write_data_report
from scail_lab.files import atomic_write_bytes
from scail_lab.training.callbacks import ExportWeights, Throughput, ValidationVideos
from scail_lab.training.checkpoint_io import AtomicCheckpointIO, checkpoint_problem, find_resume
from scail_lab.training.data import MotionPairDataModule, data_parallel_factory
from scail_lab.training.ema import EMA
from scail_lab.training.lora import LoraSettings
from scail_lab.training.module import SCAILModule
from scail_lab.training.optim import OptimizerConfig
from scail_lab.training.strategies import build_strategy

log = logging.getLogger("train")


def output_dir(cfg: DictConfig) -> Path:
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    return Path(HydraConfig.get().runtime.output_dir)


def loggers(cfg: DictConfig, out: Path) -> list:
    found = [CSVLogger(save_dir=str(out), name="csv", version="")]
    wb = cfg.logging.wandb
    if wb.enabled:
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_MODE", wb.mode)
        found.append(WandbLogger(project=wb.project, name=wb.name, group=wb.group, save_dir=str(out),
                                 config=OmegaConf.to_container(cfg, resolve=True)))  # fmt: skip
    return found


def check_data_sources(cfg: DictConfig) -> None:
    """Local data paths must exist before anything is built (brace patterns, lists and URLs are left to the loader)."""
    for name in ("data", "val_data"):
        node = cfg.get(name)
        if not node:
            continue
        for key in ("shards", "folders"):
            source = node.get(key)
            if (
                not isinstance(source, str)
                or any(c in source for c in "{}*")
                or "::" in source
                or "://" in source
            ):
                continue
            if not Path(source).exists():
                hint = " (make the toy world with: python tools/make_synthetic.py --out data/synthetic)"
                raise FileNotFoundError(
                    f"{name}.{key} does not exist: {source}" + (hint if "synthetic" in source else "")
                )


def resume_path(cfg: DictConfig, out: Path) -> str | None:
    """`resume`: null (start), a checkpoint path (must be complete), or `auto`: the newest complete checkpoint of this
    run's checkpoints/ (none: start from scratch), saying which newer ones were skipped and why."""
    resume = cfg.get("resume")
    if resume is None:
        return None
    if str(resume) == "auto":
        found, skipped = find_resume(out / "checkpoints")
        for path, reason in skipped:
            log.warning("resume=auto: skipping %s: %s", path, reason)
        log.info("resume=auto: %s", f"resuming from {found}" if found else "no complete checkpoint, starting fresh")
        return None if found is None else str(found)
    problem = checkpoint_problem(resume)
    if problem is not None:
        raise ValueError(f"resume={resume}: {problem}; resume=auto picks the newest complete checkpoint of the run")
    return str(resume)


def train(cfg: DictConfig) -> dict:
    """Build everything (config errors surface here, before any step), fit, export, return final metrics."""
    L.seed_everything(cfg.seed, workers=True)
    check_data_sources(cfg)
    out = output_dir(cfg)
    resume = resume_path(cfg, out)
    optimizer = OptimizerConfig(**plain(cfg.optimizer))
    lora = LoraSettings(**plain(cfg.lora))
    if cfg.ema.enabled and cfg.strategy.name in ("deepspeed_zero3", "fsdp", "fsdp2"):  # they shard what EMA follows
        raise ValueError(f"ema.enabled needs whole parameters on each rank, strategy {cfg.strategy.name} shards them: "
                         "use auto/ddp/deepspeed_zero2")  # fmt: skip
    if cfg.strategy.get("param_dtype") in ("bfloat16", "float16") and "mixed" not in str(cfg.trainer.precision):
        raise ValueError(f"strategy.param_dtype={cfg.strategy.param_dtype} casts the sharded weights for compute; "
                         "the fp32 parts of the model then need autocast: set trainer.precision=bf16-mixed (or 16-mixed)")
    strategy = build_strategy(cfg.strategy.name, cfg.trainer.accelerator, cfg.strategy.offload_optimizer,
                              int(cfg.strategy.bucket_size),
                              int(cfg.strategy.get("param_persistence_threshold", 100000)),
                              cfg.strategy.get("param_dtype"))  # fmt: skip
    model = build_model(cfg)
    needs_encoder = cfg.data.kind == "pixel" or bool(cfg.validation.examples)
    encoder = build_encoder(cfg, model) if needs_encoder else None
    scheme = data_mask_scheme(model)  # the one source of the mask scheme: the model's (`mask` group); data configs have none
    train_loader = instantiate(cfg.data, _partial_=True, mask_scheme=scheme, seed=cfg.seed,
                               report_dir=str(out / "data_report"))  # fmt: skip
    val_loader = (
        instantiate(cfg.val_data, _partial_=True, mask_scheme=scheme) if cfg.get("val_data") else None
    )
    sp = int(cfg.sequence_parallel)
    if sp > 1:  # the ranks of one sequence-parallel group read the same batches
        train_loader = data_parallel_factory(train_loader, sp)
        val_loader = data_parallel_factory(val_loader, sp) if val_loader is not None else None
    module = SCAILModule(model, optimizer, instantiate(cfg.objective), encoder, lora, cfg.seed,
                         tuple(cfg.validation.val_sigmas), sequence_parallel=sp,
                         trainable=cfg.get("trainable"))  # fmt: skip
    resolved = OmegaConf.to_container(cfg, resolve=True)
    ema = EMA(cfg.ema.decay, cfg.ema.get("device")) if cfg.ema.enabled else None
    callbacks = [
        ModelCheckpoint(dirpath=str(out / "checkpoints"), every_n_train_steps=cfg.checkpointing.every_n_steps,
                        save_last=cfg.checkpointing.save_last, save_top_k=cfg.checkpointing.keep,
                        monitor="step", mode="max", filename="step{step:07d}", auto_insert_metric_name=False),
        Throughput(),
        ExportWeights(str(out / "export"), resolved, ema),
    ]  # fmt: skip
    if ema is not None:
        callbacks.append(ema)
    if cfg.validation.examples:
        factory = lambda model, encoder: build_pipeline(cfg, model, encoder)  # noqa: E731
        callbacks.append(ValidationVideos(factory, list(cfg.validation.examples), cfg.validation.every_n_steps,
                                          str(out / "val_videos"), cfg.seed))  # fmt: skip
    trainer_options = plain(cfg.trainer)
    if val_loader is None:
        trainer_options["limit_val_batches"] = 0
    trainer = L.Trainer(**trainer_options, strategy=strategy, logger=loggers(cfg, out), callbacks=callbacks,
                        default_root_dir=str(out), plugins=[AtomicCheckpointIO()])  # fmt: skip
    datamodule = MotionPairDataModule(train_loader, val_loader)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if trainer.is_global_zero:
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        record = {"metrics": metrics, "step": trainer.global_step, "overrides": overrides}
        atomic_write_bytes(out / "metrics.json", json.dumps(record, indent=2).encode())
        if (out / "data_report").is_dir():
            report = write_data_report(out / "data_report", out)
            for warning in report["warnings"]:
                log.warning("data: %s (see %s)", warning, out / "data_report.md")
    return metrics


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get("train/loss")


if __name__ == "__main__":
    main()
