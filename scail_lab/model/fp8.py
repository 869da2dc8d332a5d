"""fp8 weight storage (`weights_dtype=float8_e4m3fn`): the DiT blocks' Linear weights stored as float8 e4m3 with a
float32 scale per output channel (or one per tensor), upcast per layer at compute; everything else (norms,
embeddings, modulation, time / text / image projections, the head, the biases) keeps its precision.

Keys: a quantized Linear keeps the official `<module>.weight` name (now float8) and adds `<module>.weight_scale`.
Official bf16 / fp32 files are converted on the fly while loading, one tensor at a time (`fp8_transform`), so the
full-precision model never sits in memory; files written by `tools/convert_checkpoint.py --dtype fp8` load as they
are. On a GPU with fp8 matmuls `torch._scaled_mm` could skip the upcast; here the weight is dequantised into the
activation dtype, which works on every device.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

QUANTIZED = re.compile(r"^blocks\.\d+\.(self_attn\.(q|k|v|o)|cross_attn\.(q|k|v|o|k_img|v_img)|ffn\.(0|2))$")
SCALES = ("channel", "tensor")


def float8_dtype() -> torch.dtype:
    if not hasattr(torch, "float8_e4m3fn"):
        raise ValueError(f"fp8 weights need a torch with float8 dtypes (2.1+), this is {torch.__version__}")
    return torch.float8_e4m3fn


def quantize(weight: Tensor, scale: str = "channel") -> tuple[Tensor, Tensor]:
    """[out, in] float -> (float8 e4m3 [out, in], float32 scale [out] or [1]) with weight ~= q * scale."""
    if scale not in SCALES:
        raise ValueError(f"fp8 scale must be one of {SCALES}, got {scale!r}")
    fp8 = float8_dtype()
    w = weight.detach().float()
    amax = w.abs().amax(dim=1) if scale == "channel" else w.abs().amax().reshape(1)
    s = (amax / torch.finfo(fp8).max).clamp_min(1e-12)  # e4m3: +-448
    q = (w / (s[:, None] if scale == "channel" else s)).to(fp8)
    return q, s


class Float8Linear(nn.Module):
    """A Linear whose weight is stored in float8 with a float32 scale; computes in the input's dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, scale: str = "channel",
                 device=None) -> None:  # fmt: skip
        super().__init__()
        self.in_features, self.out_features, self.scale_kind = in_features, out_features, scale
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=float8_dtype(), device=device),
                                   requires_grad=False)  # fmt: skip
        self.register_buffer("weight_scale", torch.ones(out_features if scale == "channel" else 1, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, scale: str = "channel") -> Float8Linear:
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, scale, linear.weight.device)
        if linear.weight.device.type != "meta":
            q, s = quantize(linear.weight, scale)
            module.weight.data, module.weight_scale.data = q, s
            if linear.bias is not None:
                module.bias.data = linear.bias.data.clone()
        return module

    def dequantized(self, dtype: torch.dtype) -> Tensor:
        scale = self.weight_scale.to(dtype)
        return self.weight.to(dtype) * (scale[:, None] if self.scale_kind == "channel" else scale)

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), self.dequantized(dtype), bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, fp8 e4m3, scale per {self.scale_kind}"


def quantize_model(model: nn.Module, scale: str = "channel") -> int:
    """Replace every block Linear (`QUANTIZED`) by a Float8Linear in place (on the meta device: structure only)."""
    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and QUANTIZED.match(name):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, Float8Linear.from_linear(module, scale))
            count += 1
    if not count:
        raise ValueError(f"{type(model).__name__} has no block Linear layers to store in fp8")
    return count


def fp8_transform(scale: str = "channel") -> Callable[[str, Tensor], dict[str, Tensor]]:
    """Per-tensor loading hook: a full-precision block Linear weight -> {weight: float8, weight_scale: ...}; a
    tensor already in float8 (or its scale) passes as it is; everything else unchanged."""

    def transform(key: str, tensor: Tensor) -> dict[str, Tensor]:
        module, _, leaf = key.rpartition(".")
        if leaf == "weight" and QUANTIZED.match(module) and tensor.dtype != float8_dtype():
            q, s = quantize(tensor, scale)
            return {key: q, f"{module}.weight_scale": s}
        return {key: tensor}

    return transform


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and persistent buffer (what the weights occupy in memory)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
