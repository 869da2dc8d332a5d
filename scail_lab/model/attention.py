"""One attention function with interchangeable backends.

q, k, v: [B, L, num_heads, head_dim] (the layout Wan's blocks produce) -> [B, Lq, num_heads, head_dim].
`sdpa` (default) is torch's scaled_dot_product_attention and runs on CPU; `flash` uses the flash-attn package
(FlashAttention 3 `flash_attn_interface` if present, else flash-attn 2) on CUDA with fp16/bf16 inputs.
Attention is full (no window, no padding mask): SCAIL-2 attends to every token, including zero-padded text.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("sdpa", "flash")


def _flash_module():
    for name in ("flash_attn_interface", "flash_attn"):
        if importlib.util.find_spec(name) is not None:
            return importlib.import_module(name)
    return None


def check_backend(backend: str) -> str:
    """Validate a backend name at construction time, before any heavy work."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "flash" and _flash_module() is None:
        raise ValueError(
            "attention backend 'flash' was requested but neither flash_attn_interface (FA3) nor flash_attn (FA2) "
            "is installed; install flash-attn or use attention_backend=sdpa"
        )
    return backend


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str = "sdpa") -> Tensor:
    """Full softmax attention over [B, L, heads, head_dim] tensors; q and k are cast to v's dtype."""
    q, k = q.to(v.dtype), k.to(v.dtype)
    if backend == "flash" and q.is_cuda:
        module = _flash_module()
        dtype = v.dtype if v.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        out = module.flash_attn_func(q.to(dtype), k.to(dtype), v.to(dtype))
        out = out[0] if isinstance(out, tuple) else out
        return out.to(v.dtype)
    # SDPA wants [B, heads, L, head_dim].
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
