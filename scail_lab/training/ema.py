"""Exponential moving average of the trainable weights (SCAIL-2 trains without one; most fine-tunes want it).

ema <- decay * ema + (1 - decay) * weight after every optimizer step, kept in fp32 on the training device (or, with
`device: cpu`, in host memory: a 14B full fine-tune's 66 GB of fp32 averages leave the GPU; each update then copies
the weights to the host) and saved in the Lightning checkpoint (exact resume). `ExportWeights` writes the averaged weights beside the raw ones
(with LoRA the trainable weights are the adapters: their average is exported as lora_ema_*.safetensors).
Under DeepSpeed ZeRO-3 the ranks hold only shards of the parameters; use ZeRO-2, DDP or FSDP with EMA.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn


class EMA(L.Callback):
    def __init__(self, decay: float = 0.999, device: str | None = None) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        if device not in (None, "cpu"):
            raise ValueError(f"EMA device must be null (the training device) or cpu, got {device!r}")
        self.decay = float(decay)
        self.device = device
        self.shadow: dict[str, Tensor] = {}

    @staticmethod
    def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def on_fit_start(self, trainer, pl_module) -> None:
        params = self._trainable(pl_module.model)
        where = lambda p: self.device or p.device  # noqa: E731
        if self.shadow:  # restored from a checkpoint
            self.shadow = {n: t.to(where(params[n])) for n, t in self.shadow.items()}
            return
        self.shadow = {n: p.detach().to(where(p), torch.float32, copy=True) for n, p in params.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # no optimizer step on this batch
        for name, param in self._trainable(pl_module.model).items():
            shadow = self.shadow[name]
            shadow.lerp_(param.detach().to(shadow.device, torch.float32), 1.0 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {n: t.cpu() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = dict(state["shadow"])

    def averaged_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The model's state dict with every trainable tensor replaced by its average (in the model's dtype)."""
        state = {k: v.detach() for k, v in model.state_dict().items()}
        for name, value in self.shadow.items():
            state[name] = value.to(state[name].dtype)
        return state
