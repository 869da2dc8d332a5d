"""CLIP ViT-H/14 (open-clip XLM-RoBERTa variant) visual tower of Wan 2.1 / SCAIL-2, penultimate tokens.

Our own torch module with the official key names (`visual.patch_embedding.weight`,
`visual.transformer.{i}.attn.to_qkv.weight`, `visual.transformer.{i}.mlp.0.weight`, ...), loaded strictly from
`models_clip_open-clip-xlm-roberta-large-vit-huge-14-onlyvisual.pth` (keys `visual.*` + `log_scale`) or
from Wan 2.1's full CLIP file (its `textual.*` keys are ignored).

Computation (as Wan's `CLIPModel.visual(..., use_31_block=True)`):
    images [B, 3, H, W] in [-1, 1] -> bicubic squash resize to 224 x 224 (align_corners=False, aspect not
    kept) -> [0, 1] -> CLIP mean/std -> conv patch 14 (no bias) -> [class | 256 patches] + pos embedding ->
    pre-norm LN -> blocks 1..31 of 32 (pre-norm attention + exact-GELU MLP) -> [B, 257, 1280]
    No final norm: post_norm and head are loaded (strict) but unused.
Shape legend: B images, S image size (224), P = (S / patch)^2 patches, D width (1280).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scail_lab.checkpoints.io import load_torch_file
from scail_lab.checkpoints.keys import check_key_shapes
from scail_lab.encoders.text import as_dtype

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIT_H14 = dict(
    image_size=224, patch_size=14, dim=1280, mlp_ratio=4.0, out_dim=1024, num_heads=16, num_layers=32
)


@runtime_checkable
class ImageEncoder(Protocol):
    """What the pipeline needs: images [B, 3, H, W] in [-1, 1] -> tokens [B, num_tokens, out_dim]."""

    out_dim: int
    num_tokens: int

    def encode(self, images: Tensor) -> Tensor: ...


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in at least fp32 and cast back (the official CLIP does this for fp16 weights)."""

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        weight, bias = self.weight.to(dtype), self.bias.to(dtype)
        return F.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps).type_as(x)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, s, d = x.shape
        qkv = self.to_qkv(x).view(b, s, 3, self.num_heads, d // self.num_heads)  # [B, L, 3, heads, hd]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, L, hd]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, s, d))  # [B, heads, L, hd] -> [B, L, D]


class AttentionBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float, num_heads: int, eps: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = LayerNorm32(dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = LayerNorm32(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """The CLIP visual tower with the official parameter names; `forward` stops after `num_blocks` blocks."""

    def __init__(
        self,
        *,
        image_size: int = 224,
        patch_size: int = 14,
        dim: int = 1280,
        mlp_ratio: float = 4.0,
        out_dim: int = 1024,
        num_heads: int = 16,
        num_layers: int = 32,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.dim = dim
        self.num_layers = num_layers
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embedding = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size, bias=False)
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, 1 + self.num_patches, dim))
        self.pre_norm = LayerNorm32(dim, eps=eps)
        self.transformer = nn.Sequential(
            *[AttentionBlock(dim, mlp_ratio, num_heads, eps) for _ in range(num_layers)]
        )
        self.post_norm = LayerNorm32(
            dim, eps=eps
        )  # unused for the penultimate tokens, kept for strict loading
        self.head = nn.Parameter(torch.zeros(dim, out_dim))  # idem

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Random init (CLIP-style scales) for the light CPU encoder; the real one loads weights."""
        gain = self.dim**-0.5
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif "norm" in name:
                nn.init.ones_(param)
            elif name in ("cls_embedding", "pos_embedding", "head"):
                nn.init.normal_(param, std=gain, generator=generator)
            else:
                nn.init.normal_(param, std=0.02, generator=generator)

    def forward(self, pixels: Tensor, num_blocks: int | None = None) -> Tensor:
        """Normalised pixels [B, 3, S, S] -> tokens [B, 1 + P, D] after the first `num_blocks` blocks."""
        b = pixels.shape[0]
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype))  # [B, D, S/p, S/p]
        x = x.flatten(2).transpose(1, 2)  # [B, P, D]
        x = torch.cat([self.cls_embedding.expand(b, -1, -1).to(x.dtype), x], dim=1)  # [B, 1 + P, D]
        x = self.pre_norm(x + self.pos_embedding.to(x.dtype))
        for block in self.transformer[: self.num_layers if num_blocks is None else num_blocks]:
            x = block(x)
        return x


class CLIPImageEncoder(nn.Module):
    """Frozen CLIP visual tower: images in [-1, 1] -> penultimate-block tokens [B, 1 + P, D].

    num_blocks: blocks to run (default num_layers - 1, the official `use_31_block`).
    offload=True keeps the weights on CPU between calls and moves them to `device` only while encoding.
    """

    def __init__(
        self,
        *,
        visual: VisionTransformer,
        num_blocks: int | None = None,
        device: torch.device | str = "cpu",
        offload: bool = False,
    ) -> None:
        super().__init__()
        num_blocks = visual.num_layers - 1 if num_blocks is None else num_blocks
        if not 0 <= num_blocks <= visual.num_layers:
            raise ValueError(f"num_blocks must be in [0, {visual.num_layers}], got {num_blocks}")
        self.visual = visual.eval().requires_grad_(False)
        self.num_blocks = num_blocks
        self.out_dim = visual.dim
        self.num_tokens = 1 + visual.num_patches
        self.device = torch.device(device)
        self.offload = offload
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.visual.to("cpu" if offload else self.device)

    @classmethod
    def from_wan_checkpoint(
        cls,
        *,
        checkpoint_path: str | Path,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str = "cpu",
        offload: bool = False,
        num_blocks: int | None = None,
        **vit_kwargs,
    ) -> CLIPImageEncoder:
        """Load the official CLIP `.pth` strictly (its `visual.*` keys); vit_kwargs override the ViT-H/14 sizes.

        dtype None: float16 on CUDA (as Wan runs it), float32 elsewhere (Wan forces fp32 on CPU too).
        """
        if dtype is None:
            dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
        state = load_torch_file(checkpoint_path)
        if not isinstance(state, Mapping):
            raise ValueError(f"{checkpoint_path}: expected a state dict, got {type(state).__name__}")
        visual_state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
        ignored = len(state) - len(visual_state)
        with torch.device("meta"):
            visual = VisionTransformer(**{**VIT_H14, **vit_kwargs})
        expected = {k: tuple(v.shape) for k, v in visual.state_dict().items()}
        check_key_shapes(visual_state, expected, what=f"{checkpoint_path} (visual.*)")
        visual.load_state_dict(visual_state, strict=True, assign=True)
        visual.to(as_dtype(dtype))
        logger.info(
            "CLIP visual: %d layers from %s (%d non-visual keys ignored)",
            visual.num_layers,
            checkpoint_path,
            ignored,
        )
        return cls(visual=visual, num_blocks=num_blocks, device=device, offload=offload)

    @classmethod
    def from_checkpoint_dir(cls, checkpoint_dir: str | Path, **kwargs) -> CLIPImageEncoder:
        """Build from an official checkpoint folder (see `scail_lab.checkpoints.folder`)."""
        from scail_lab.checkpoints.folder import resolve_checkpoint_dir

        files = resolve_checkpoint_dir(checkpoint_dir, require=("clip",))
        return cls.from_wan_checkpoint(checkpoint_path=files.clip, **kwargs)

    def train(self, mode: bool = True) -> CLIPImageEncoder:
        """Stays in eval mode: the encoder is frozen."""
        return super().train(False)

    def preprocess(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, 3, S, S] CLIP-normalised (bicubic squash, no antialias), fp32."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        size = (self.visual.image_size, self.visual.image_size)
        x = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False)
        return (x * 0.5 + 0.5 - self.mean.to(x.device)) / self.std.to(x.device)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> tokens [B, 1 + P, D] in the weights' dtype.

        Runs on `device` when offloading, else wherever the weights are (they may have been moved since).
        """
        if self.offload:
            self.visual.to(self.device)
        device = self.visual.pos_embedding.device
        try:
            return self.visual(self.preprocess(images.to(device)), num_blocks=self.num_blocks)
        finally:
            if self.offload:
                self.visual.to("cpu")

    def encode(self, images: Tensor) -> Tensor:
        """The pipeline's encoder interface: the same as calling the module."""
        return self(images)
