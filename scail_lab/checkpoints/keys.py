"""The official Wan-layout key table of the SCAIL / SCAIL-2 denoiser, config inference and validation.

The released SCAIL-2 14B DiT has 1307 tensors in Wan layout: 32 per block x 40 blocks + 27 globals.
SCAIL-Preview (SCAIL-1) has no mask patch embedding: 32 per block + 25 globals.

Shapes (dim D, ffn F, layers N, patch (1, 2, 2)):
    blocks.i.modulation                           [1, 6, D]
    blocks.i.self_attn.{q,k,v,o}.weight / .bias   [D, D] / [D]
    blocks.i.self_attn.norm_{q,k}.weight          [D]
    blocks.i.norm3.{weight,bias}                  [D]
    blocks.i.cross_attn.{q,k,v,o,k_img,v_img}     [D, D] / [D]
    blocks.i.cross_attn.norm_{q,k,k_img}.weight   [D]
    blocks.i.ffn.0 / ffn.2                        [F, D] + [F] / [D, F] + [D]
    patch_embedding{,_pose}                       [D, in_dim, 1, 2, 2] + [D]
    patch_embedding_mask                          [D, mask_dim, 1, 2, 2] + [D]
    text_embedding.{0,2}                          [D, text_dim] / [D, D]
    time_embedding.{0,2}, time_projection.1       [D, freq_dim] / [D, D], [6D, D]
    head.modulation, head.head                    [1, 2, D], [out_dim * 4, D]
    img_emb.proj.{0,1,3,4}                        LN(clip_dim), Linear(clip_dim, clip_dim), Linear(clip_dim, D), LN(D)
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

Shape = tuple[int, ...]

# Wan 2.1 uses 128-dim heads in every released size (1.3B: 1536/12, 14B: 5120/40). The head count is
# not visible in any tensor shape, so conversion infers it from this unless told otherwise.
WAN_HEAD_DIM = 128
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


def block_key_shapes(index: int, *, dim: int, ffn_dim: int) -> dict[str, Shape]:
    """The 32 Wan keys of block `index` and their shapes."""
    p = f"blocks.{index}."
    shapes: dict[str, Shape] = {f"{p}modulation": (1, 6, dim)}
    for name in ("q", "k", "v", "o"):
        shapes[f"{p}self_attn.{name}.weight"] = (dim, dim)
        shapes[f"{p}self_attn.{name}.bias"] = (dim,)
    shapes[f"{p}self_attn.norm_q.weight"] = (dim,)
    shapes[f"{p}self_attn.norm_k.weight"] = (dim,)
    shapes[f"{p}norm3.weight"] = (dim,)
    shapes[f"{p}norm3.bias"] = (dim,)
    for name in ("q", "k", "v", "o", "k_img", "v_img"):
        shapes[f"{p}cross_attn.{name}.weight"] = (dim, dim)
        shapes[f"{p}cross_attn.{name}.bias"] = (dim,)
    for name in ("norm_q", "norm_k", "norm_k_img"):
        shapes[f"{p}cross_attn.{name}.weight"] = (dim,)
    shapes[f"{p}ffn.0.weight"] = (ffn_dim, dim)
    shapes[f"{p}ffn.0.bias"] = (ffn_dim,)
    shapes[f"{p}ffn.2.weight"] = (dim, ffn_dim)
    shapes[f"{p}ffn.2.bias"] = (dim,)
    return shapes


def official_key_shapes(
    *,
    dim: int,
    ffn_dim: int,
    num_layers: int,
    in_dim: int = 20,
    mask_dim: int = 28,
    out_dim: int = 16,
    text_dim: int = 4096,
    freq_dim: int = 256,
    clip_dim: int = 1280,
    patch_size: tuple[int, int, int] = (1, 2, 2),
) -> dict[str, Shape]:
    """Official Wan-layout key -> shape table of the SCAIL denoiser (mask_dim=0: SCAIL-Preview, no mask conv).

    Globals come first, then blocks in order, which is also the order the converter writes them in.
    """
    for name, value in (("dim", dim), ("ffn_dim", ffn_dim), ("num_layers", num_layers), ("in_dim", in_dim)):
        if value <= 0:
            raise ValueError(f"official_key_shapes: {name} must be positive, got {value}")
    if mask_dim < 0:
        raise ValueError(f"official_key_shapes: mask_dim must be >= 0, got {mask_dim}")
    kernel = tuple(int(k) for k in patch_size)
    shapes: dict[str, Shape] = {
        "patch_embedding.weight": (dim, in_dim, *kernel),
        "patch_embedding.bias": (dim,),
        "patch_embedding_pose.weight": (dim, in_dim, *kernel),
        "patch_embedding_pose.bias": (dim,),
    }
    if mask_dim:
        shapes["patch_embedding_mask.weight"] = (dim, mask_dim, *kernel)
        shapes["patch_embedding_mask.bias"] = (dim,)
    shapes.update(
        {
            "text_embedding.0.weight": (dim, text_dim),
            "text_embedding.0.bias": (dim,),
            "text_embedding.2.weight": (dim, dim),
            "text_embedding.2.bias": (dim,),
            "time_embedding.0.weight": (dim, freq_dim),
            "time_embedding.0.bias": (dim,),
            "time_embedding.2.weight": (dim, dim),
            "time_embedding.2.bias": (dim,),
            "time_projection.1.weight": (6 * dim, dim),
            "time_projection.1.bias": (6 * dim,),
            "head.modulation": (1, 2, dim),
            "head.head.weight": (out_dim * math.prod(kernel), dim),
            "head.head.bias": (out_dim * math.prod(kernel),),
            "img_emb.proj.0.weight": (clip_dim,),
            "img_emb.proj.0.bias": (clip_dim,),
            "img_emb.proj.1.weight": (clip_dim, clip_dim),
            "img_emb.proj.1.bias": (clip_dim,),
            "img_emb.proj.3.weight": (dim, clip_dim),
            "img_emb.proj.3.bias": (dim,),
            "img_emb.proj.4.weight": (dim,),
            "img_emb.proj.4.bias": (dim,),
        }
    )
    for index in range(num_layers):
        shapes.update(block_key_shapes(index, dim=dim, ffn_dim=ffn_dim))
    return shapes


@dataclass(frozen=True)
class DenoiserConfig:
    """The official `config.json` fields of a SCAIL denoiser (plus the dims the key table needs)."""

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 20
    mask_dim: int = 28
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    clip_dim: int = 1280
    patch_size: tuple[int, int, int] = (1, 2, 2)
    model_type: str = "i2v"
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.num_heads <= 0 or self.dim % self.num_heads:
            raise ValueError(f"DenoiserConfig: num_heads={self.num_heads} must divide dim={self.dim}")
        if (self.dim // self.num_heads) % 2:
            raise ValueError(
                f"DenoiserConfig: head_dim={self.dim // self.num_heads} must be even (RoPE pairs)"
            )
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

    def key_shapes(self) -> dict[str, Shape]:
        return official_key_shapes(
            dim=self.dim,
            ffn_dim=self.ffn_dim,
            num_layers=self.num_layers,
            in_dim=self.in_dim,
            mask_dim=self.mask_dim,
            out_dim=self.out_dim,
            text_dim=self.text_dim,
            freq_dim=self.freq_dim,
            clip_dim=self.clip_dim,
            patch_size=self.patch_size,
        )

    def to_json_dict(self) -> dict:
        """Official `config.json` fields (same names as the released `config-14b.json`) plus ours."""
        fields = dataclasses.asdict(self)
        fields["patch_size"] = list(self.patch_size)
        return {"_class_name": "WanSCAILModel", **dict(sorted(fields.items()))}

    def dit_config_kwargs(self) -> dict:
        """Keyword arguments of `scail_lab.model.dit.DiTConfig` for this checkpoint (latent = in_dim - 4 I2V mask
        channels; clip_dim 0 for a t2v model). The mask width is chosen by the model's mask scheme (mask_dim)."""
        return {
            "dim": self.dim,
            "ffn_dim": self.ffn_dim,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "freq_dim": self.freq_dim,
            "text_dim": self.text_dim,
            "text_len": self.text_len,
            "latent_dim": self.in_dim - 4,
            "out_dim": self.out_dim,
            "clip_dim": self.clip_dim if self.model_type == "i2v" else 0,
            "patch_size": self.patch_size,
            "eps": self.eps,
        }

    @classmethod
    def from_json_dict(cls, data: Mapping) -> DenoiserConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "patch_size" in values:
            values["patch_size"] = tuple(values["patch_size"])
        missing = {"dim", "ffn_dim", "num_heads", "num_layers"} - values.keys()
        if missing:
            raise ValueError(f"denoiser config is missing {sorted(missing)}")
        return cls(**values)

    @classmethod
    def from_json_file(cls, path) -> DenoiserConfig:
        with open(path, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON: {error}") from error
        return cls.from_json_dict(data)


def _shape_of(shapes: Mapping[str, Shape], key: str) -> Shape:
    if key not in shapes:
        raise ValueError(f"cannot infer the denoiser config: key {key!r} is missing")
    return tuple(shapes[key])


def infer_denoiser_config(
    shapes: Mapping[str, Shape],
    *,
    num_heads: int | None = None,
    text_len: int = 512,
    eps: float = 1e-6,
) -> DenoiserConfig:
    """Read every dimension of the official config off the tensor shapes of a Wan-layout state dict.

    `num_heads` (not visible in any shape) defaults to dim / 128, the Wan 2.1 head size.
    """
    patch = _shape_of(shapes, "patch_embedding.weight")  # [D, in_dim, kt, kh, kw]
    dim, in_dim, kernel = patch[0], patch[1], patch[2:]
    mask_dim = (
        tuple(shapes["patch_embedding_mask.weight"])[1] if "patch_embedding_mask.weight" in shapes else 0
    )
    head_out = _shape_of(shapes, "head.head.weight")[0]
    layers = {int(m.group(1)) for key in shapes if (m := _BLOCK_RE.match(key))}
    if not layers:
        raise ValueError("cannot infer the denoiser config: no blocks.<i>.* keys")
    if layers != set(range(len(layers))):
        raise ValueError(f"block indices are not contiguous from 0: {sorted(layers)}")
    if num_heads is None:
        if dim % WAN_HEAD_DIM:
            raise ValueError(f"dim={dim} is not a multiple of {WAN_HEAD_DIM}; pass num_heads explicitly")
        num_heads = dim // WAN_HEAD_DIM
    return DenoiserConfig(
        dim=dim,
        ffn_dim=_shape_of(shapes, "blocks.0.ffn.0.weight")[0],
        num_heads=num_heads,
        num_layers=len(layers),
        in_dim=in_dim,
        mask_dim=mask_dim,
        out_dim=head_out // math.prod(kernel),
        text_dim=_shape_of(shapes, "text_embedding.0.weight")[1],
        text_len=text_len,
        freq_dim=_shape_of(shapes, "time_embedding.0.weight")[1],
        clip_dim=_shape_of(shapes, "img_emb.proj.0.weight")[0] if "img_emb.proj.0.weight" in shapes else 1280,
        patch_size=tuple(kernel),
        model_type="i2v" if "img_emb.proj.0.weight" in shapes else "t2v",
        eps=eps,
    )


def _listing(title: str, items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{len(items)} {title}: {shown}{more}"


def check_key_shapes(
    actual: Mapping[str, Shape | Tensor],
    expected: Mapping[str, Shape],
    *,
    what: str = "checkpoint",
) -> None:
    """Raise one ValueError that lists missing, unexpected and mis-shaped keys (nothing is printed)."""
    got = {k: tuple(v.shape) if isinstance(v, Tensor) else tuple(v) for k, v in actual.items()}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    misshaped = [
        f"{k} {got[k]} != {tuple(expected[k])}" for k in expected if k in got and got[k] != tuple(expected[k])
    ]
    if missing or unexpected or misshaped:
        parts = [
            _listing(title, items)
            for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
            if items
        ]
        raise ValueError(f"{what} does not match the expected key layout: " + "; ".join(parts))
