"""Callbacks: throughput, validation videos through the AnimationPipeline, final safetensors export."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch

from scail_lab.data import media, schema
from scail_lab.files import atomic_write_text, save_safetensors
from scail_lab.model.lora import EXPORT_STYLES, export_lora
from scail_lab.training.lora import adapter_tensors
from scail_lab.training.module import tokens_per_sample
from scail_lab.training.strategies import full_state_dict, shards_parameters

log = logging.getLogger(__name__)


class Throughput(L.Callback):
    """Logs samples/s and tokens/s (video + reference + pose tokens) of the training steps."""

    def __init__(self) -> None:
        self._start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is None:
            return
        seconds = max(time.perf_counter() - self._start, 1e-9)
        latents = batch.get(schema.TARGET_LATENTS)
        size = len(batch[schema.SAMPLE_KEY])
        if latents is not None:
            tokens = tokens_per_sample(latents) * size
        else:
            _, _, n, h, w = batch[schema.TARGET].shape
            f = pl_module.encoder.spatial_factor
            tokens = tokens_per_sample(torch.empty(0, 0, (n - 1) // 4 + 1, h // f, w // f)) * size
        pl_module.log("perf/samples_per_s", size / seconds, batch_size=size)
        pl_module.log("perf/tokens_per_s", tokens / seconds, batch_size=size)


class ValidationVideos(L.Callback):
    """Every `every_n_steps`, sample the validation examples with the inference pipeline, write mp4s, log them
    (W&B video when a WandbLogger is attached) and compute weight-free metrics against the targets."""

    def __init__(self, pipeline_factory, examples: Sequence[str], every_n_steps: int = 100, out_dir: str = "val_videos",
                 seed: int = 0) -> None:  # fmt: skip
        self.pipeline_factory = pipeline_factory
        self.examples = list(examples)
        self.every_n_steps = every_n_steps
        self.out_dir = Path(out_dir)
        self.seed = seed

    def _run(self, trainer, pl_module) -> None:
        was_training = pl_module.model.training
        pl_module.model.eval()
        # Rank 0 samples alone (sharded parameters: every rank samples in step, rank 0 writes). Each rank samples the
        # whole clip: a sequence-parallel model would wait for its group's collectives
        sp, pl_module.model.sequence_parallel = getattr(pl_module.model, "sequence_parallel", None), None
        try:
            self._sample(trainer, pl_module)
        finally:
            pl_module.model.sequence_parallel = sp
            pl_module.model.train(was_training)

    def _sample(self, trainer, pl_module) -> None:
        from scail_lab.pipeline import load_example
        from scail_lab.pipeline.outputs import write_result

        pipeline = self.pipeline_factory(model=pl_module.model, encoder=pl_module.encoder)
        step_dir = self.out_dir / f"step_{trainer.global_step:07d}"
        for folder in self.examples:
            example = load_example(folder)
            result = pipeline(example, seed=self.seed)
            if not trainer.is_global_zero:
                continue
            paths = write_result(result, step_dir)
            metrics = self._metrics(result, Path(folder))
            for name, value in metrics.items():
                pl_module.log(f"val_video/{name}", value, rank_zero_only=True)
            self._log_video(trainer, example.name, paths["side_by_side"], trainer.global_step)

    @staticmethod
    def _metrics(result, folder: Path) -> dict[str, float]:
        target_path = next((folder / n for n in schema.TARGET_FILES if (folder / n).is_file()), None)
        if target_path is None:
            return {}
        try:
            from scail_lab.metrics import compute_weight_free
        except ImportError:
            return {}
        target = torch.from_numpy(media.decode_video(target_path)).permute(3, 0, 1, 2)  # [3, N, H, W]
        n = min(target.shape[1], result.video.shape[1])
        if target.shape[-2:] != result.video.shape[-2:]:
            return {}
        return compute_weight_free(result.video[:, :n], target[:, :n])

    @staticmethod
    def _log_video(trainer, name: str, path: str, step: int) -> None:
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                import wandb

                logger.experiment.log({f"val_video/{name}": wandb.Video(path, format="mp4"), "trainer/global_step": step})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.examples and step > 0 and step % self.every_n_steps == 0:
            if trainer.is_global_zero or shards_parameters(trainer.strategy):
                self._run(trainer, pl_module)


class ExportWeights(L.Callback):
    """At the end of training write safetensors for sampling, with the resolved config beside them.

    Full fine-tune: `denoiser.safetensors` (official key names). LoRA: `lora_peft.safetensors` (PEFT / diffusers
    key style), `lora_comfy.safetensors` (ComfyUI / lightx2v lora_down / lora_up) and `lora_kohya.safetensors`
    (kohya / musubi `lora_unet_*`), adapters only, each with per-module alphas.
    With EMA: `denoiser_ema.safetensors` or `lora_ema_{peft,comfy,kohya}.safetensors` beside them.
    """

    def __init__(self, out_dir: str, config: dict | None = None, ema=None) -> None:
        self.out_dir = Path(out_dir)
        self.config = config or {}
        self.ema = ema

    def on_train_end(self, trainer, pl_module) -> None:
        model = pl_module.model
        state = full_state_dict(trainer, model)  # every rank takes part (sharded strategies gather)
        if not trainer.is_global_zero:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if pl_module.lora.enabled:
            adapters = {k: (a.float(), b.float()) for k, (a, b) in adapter_tensors(state).items()}
            sets = {"lora": adapters}
            if self.ema is not None:  # the averaged adapters (the EMA tracks exactly the trainable adapter weights)
                sets["lora_ema"] = {k: (self.ema.shadow[f"{k}.lora_A.default.weight"].cpu(),
                                        self.ema.shadow[f"{k}.lora_B.default.weight"].cpu()) for k in adapters}  # fmt: skip
            for prefix, tensors in sets.items():
                for style in EXPORT_STYLES:
                    export_lora(tensors, pl_module.lora.alpha, self.out_dir / f"{prefix}_{style}.safetensors", style)
        else:
            states = {"denoiser": state}
            if self.ema is not None:
                states["denoiser_ema"] = self.ema.averaged_state(model)
            for name, state in states.items():
                save_safetensors(state, self.out_dir / f"{name}.safetensors", metadata={"format": "pt"})
        meta = {"config": self.config, "step": trainer.global_step, "model": model.describe()}
        atomic_write_text(self.out_dir / "config.json", json.dumps(meta, indent=2, default=str))
        log.info("exported weights to %s", self.out_dir)
