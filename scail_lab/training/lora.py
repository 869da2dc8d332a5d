"""LoRA fine-tuning through PEFT: inject adapters in place (official module names kept), freeze the base,
extract adapters for checkpoints and exports (scail_lab.model.lora writes the file styles)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

DEFAULT_TARGETS = (
    "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
    "ffn.0", "ffn.2",
)  # fmt: skip


@dataclass(frozen=True)
class LoraSettings:
    enabled: bool = False
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.enabled and (self.rank < 1 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0):
            raise ValueError(f"bad LoRA settings: rank {self.rank}, alpha {self.alpha}, dropout {self.dropout}")
        if self.enabled and not self.target_modules:
            raise ValueError("LoRA needs at least one target module")


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Inject LoRA adapters in place and make only them trainable."""
    import peft

    names = {name for name, _ in model.named_modules()}
    for target in settings.target_modules:
        if not any(n == target or n.endswith("." + target) for n in names):
            raise ValueError(f"LoRA target module {target!r} matches no module of the model")
    config = peft.LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
    )  # fmt: skip
    peft.inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return model


def adapter_tensors(state: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """{module name: (down [r, in], up [out, r])} of every injected adapter in a model's state dict (names without
    PEFT wrappers). From the state, not the modules, so it also works on a state gathered from sharded ranks."""
    down, up = ".lora_A.default.weight", ".lora_B.default.weight"
    return {k.removesuffix(down): (v.detach(), state[k.removesuffix(down) + up].detach()) for k, v in state.items()
            if k.endswith(down)}  # fmt: skip
