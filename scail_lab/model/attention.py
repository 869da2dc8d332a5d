"""One attention function with interchangeable backends.

q, k, v: [B, L, num_heads, head_dim] (the layout Wan's blocks produce) -> [B, Lq, num_heads, head_dim].
`sdpa` (default) is torch's scaled_dot_product_attention and runs on CPU; `flash` uses the flash-attn package
(FlashAttention 3 `flash_attn_interface` if present, else flash-attn 2) on CUDA with fp16/bf16 inputs; `matmul` is
plain softmax(q k^T / sqrt(d)) v as two batched matmuls with the softmax in fp32; `auto` takes `matmul` for bf16 /
fp16 inputs on a CPU with at most AUTO_MATMUL_KEYS keys, else `sdpa`. Why: torch's fused CPU kernel runs bf16 no
faster than fp32 and its bf16 backward is slow for short keys and small heads, while two bf16 matmuls run on the
CPU's bf16 units (the toy fine-tune's bf16 training: 1.4x faster; docs/PERFORMANCE.md). In fp32 the fused kernel is
as fast or faster, and its memory stays linear in the length, so fp32 and long key sequences keep it.
Attention is full (no window, no padding mask): SCAIL-2 attends to every token, including zero-padded text.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("sdpa", "flash", "matmul", "auto")
AUTO_MATMUL_KEYS = 1024  # `auto`: bf16 / fp16 key sequences up to this length use `matmul` on a CPU


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
    if backend == "auto":
        low = v.dtype in (torch.bfloat16, torch.float16)
        backend = "matmul" if low and not q.is_cuda and k.shape[1] <= AUTO_MATMUL_KEYS else "sdpa"
    if backend == "matmul":
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, L, head_dim]
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # [B, heads, Lq, Lk]
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
        return torch.matmul(probs, v).transpose(1, 2)
    if backend == "flash" and q.is_cuda:
        module = _flash_module()
        dtype = v.dtype if v.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        out = module.flash_attn_func(q.to(dtype), k.to(dtype), v.to(dtype))
        out = out[0] if isinstance(out, tuple) else out
        return out.to(v.dtype)
    # SDPA wants [B, heads, L, head_dim].
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
