"""Wan 2.1 I2V transformer pieces, with the official parameter names.

Shape legend: B batch, L tokens, D model dim, Lt text tokens (text_len), Li image tokens (257), n heads,
d head dim. `mod` is the per-sample adaLN modulation e0 [B, 6, D] (fp32).

Numerics follow the released model: norms compute in fp32 and cast back; modulation, gating, the residual
stream, the time embedding and the head run in fp32 even under bf16 autocast; RoPE is applied in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scail_lab.model.attention import attention
from scail_lab.model.rope import RopeTables
from scail_lab.model.sequence_parallel import SequenceParallel


def upcast(x: Tensor) -> Tensor:
    """At least fp32 (bf16/fp16 -> fp32; fp32 and fp64 unchanged)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def linear_fp32(layer: nn.Linear, x: Tensor) -> Tensor:
    """A Linear evaluated in (at least) fp32 whatever the parameter dtype or autocast state (Wan's fp32 islands)."""
    dtype = torch.promote_types(layer.weight.dtype, torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        bias = None if layer.bias is None else layer.bias.to(dtype)
        return F.linear(x.to(dtype), layer.weight.to(dtype), bias)


def sequential_fp32(layers: nn.Sequential, x: Tensor) -> Tensor:
    """Run a Sequential of Linear layers and activations entirely in (at least) fp32."""
    x = upcast(x)
    for layer in layers:
        x = linear_fp32(layer, x) if isinstance(layer, nn.Linear) else layer(x)
    return x


def sinusoidal_embedding(timestep: Tensor, dim: int) -> Tensor:
    """[B] -> fp32 [B, dim] ordered [cos | sin], angles in float64 (as Wan computes them)."""
    half = dim // 2
    position = timestep.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=timestep.device) / half)
    angles = torch.outer(position, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


class RMSNorm(nn.Module):
    """RMS norm over the last dim, computed in fp32, cast back, then scaled by `weight`."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = upcast(x)
        y = y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back to the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        y = upcast(x)
        weight = None if self.weight is None else self.weight.to(y.dtype)
        bias = None if self.bias is None else self.bias.to(y.dtype)
        return F.layer_norm(y, self.normalized_shape, weight, bias, self.eps).type_as(x)


class Projections(nn.Module):
    """q, k, v, o projections with RMS norms on q and k over the full dim (shared by both attentions)."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)


class SelfAttention(Projections):
    """Self-attention over the whole token sequence with 3-axis RoPE on q and k."""

    def forward(self, x: Tensor, rope: RopeTables, backend: str, sp: SequenceParallel | None = None) -> Tensor:
        b, length, _ = x.shape
        heads = (b, length, self.num_heads, self.head_dim)
        q = rope.rotate_(self.norm_q(self.q(x)).view(heads))  # [B, L, n, d] fp32
        k = rope.rotate_(self.norm_k(self.k(x)).view(heads))
        v = self.v(x).view(heads)
        if sp is None:
            return self.o(attention(q, k, v, backend).flatten(2))
        # Ulysses: local tokens x all heads -> all tokens x local heads, attend, and back.
        q, k, v = sp.tokens_to_heads(q), sp.tokens_to_heads(k), sp.tokens_to_heads(v)
        return self.o(sp.heads_to_tokens(attention(q, k, v, backend)).flatten(2))


class CrossAttention(Projections):
    """Shared query; text attention (k, v) plus CLIP-image attention (k_img, v_img), summed before `o`."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6, use_image: bool = True) -> None:
        super().__init__(dim, num_heads, eps)
        if use_image:
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], -1, self.num_heads, self.head_dim)  # [B, L, n, d]

    def forward(self, x: Tensor, text: Tensor, image: Tensor | None, backend: str) -> Tensor:
        q = self._heads(self.norm_q(self.q(x)))
        out = attention(q, self._heads(self.norm_k(self.k(text))), self._heads(self.v(text)), backend)
        if image is not None:
            k_img = self._heads(self.norm_k_img(self.k_img(image)))
            out = out + attention(q, k_img, self._heads(self.v_img(image)), backend)
        return self.o(out.flatten(2))


class DiTBlock(nn.Module):
    """Pre-norm adaLN block: self-attention (gated), cross-attention (ungated), FFN (gated)."""

    def __init__(
        self, dim: int, ffn_dim: int, num_heads: int, eps: float = 1e-6, use_image: bool = True
    ) -> None:
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, num_heads, eps)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, num_heads, eps, use_image)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: Tensor,
        mod: Tensor,
        text: Tensor,
        image: Tensor | None,
        rope: RopeTables,
        backend: str,
        sp: SequenceParallel | None = None,
    ) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            upcast(self.modulation) + mod
        ).chunk(6, 1)
        y = self.self_attn(upcast(self.norm1(x)) * (1 + scale_msa) + shift_msa, rope, backend, sp)
        x = x + upcast(y) * gate_msa  # fp32 residual stream
        x = x + self.cross_attn(self.norm3(x), text, image, backend)
        y = self.ffn(upcast(self.norm2(x)) * (1 + scale_mlp) + shift_mlp)
        return x + upcast(y) * gate_mlp


class Head(nn.Module):
    """adaLN-modulated output projection to patch_volume * out_dim channels, in fp32."""

    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x: [B, L, D]; e: fp32 time embedding [B, D] -> fp32 [B, L, patch_volume * out_dim]."""
        shift, scale = (upcast(self.modulation) + e.unsqueeze(1)).chunk(2, dim=1)
        return linear_fp32(self.head, upcast(self.norm(x)) * (1 + scale) + shift)


class ImageProjection(nn.Module):
    """CLIP tokens -> model dim: LN, Linear, GELU, Linear, LN (keys img_emb.proj.{0,1,3,4}); the norms in fp32, so
    resident bf16 weights work with fp32 CLIP tokens on any device."""

    def __init__(self, clip_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            FP32LayerNorm(clip_dim),
            nn.Linear(clip_dim, clip_dim),
            nn.GELU(),
            nn.Linear(clip_dim, dim),
            FP32LayerNorm(dim),
        )

    def forward(self, clip_emb: Tensor) -> Tensor:
        return self.proj(clip_emb)
