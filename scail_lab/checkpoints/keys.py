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

import json
import math
import re
from collections.abc import Mapping

from torch import Tensor

from scail_lab.model.dit import DiTConfig
from scail_lab.model.interfaces import I2V_MASK_CHANNELS

Shape = tuple[int, ...]

# Wan 2.1 uses 128-dim heads in every released size (1.3B: 1536/12, 14B: 5120/40). The head count is
# not visible in any tensor shape, so conversion infers it from this unless told otherwise.
WAN_HEAD_DIM = 128
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


def block_key_shapes(index: int, *, dim: int, ffn_dim: int, image: bool = True) -> dict[str, Shape]:
    """The 32 Wan keys of block `index` and their shapes (26 without the CLIP-image branch: `image=False`)."""
    p = f"blocks.{index}."
    shapes: dict[str, Shape] = {f"{p}modulation": (1, 6, dim)}
    for name in ("q", "k", "v", "o"):
        shapes[f"{p}self_attn.{name}.weight"] = (dim, dim)
        shapes[f"{p}self_attn.{name}.bias"] = (dim,)
    shapes[f"{p}self_attn.norm_q.weight"] = (dim,)
    shapes[f"{p}self_attn.norm_k.weight"] = (dim,)
    shapes[f"{p}norm3.weight"] = (dim,)
    shapes[f"{p}norm3.bias"] = (dim,)
    for name in ("q", "k", "v", "o", "k_img", "v_img")[: 6 if image else 4]:
        shapes[f"{p}cross_attn.{name}.weight"] = (dim, dim)
        shapes[f"{p}cross_attn.{name}.bias"] = (dim,)
    for name in ("norm_q", "norm_k", "norm_k_img")[: 3 if image else 2]:
        shapes[f"{p}cross_attn.{name}.weight"] = (dim,)
    shapes[f"{p}ffn.0.weight"] = (ffn_dim, dim)
    shapes[f"{p}ffn.0.bias"] = (ffn_dim,)
    shapes[f"{p}ffn.2.weight"] = (dim, ffn_dim)
    shapes[f"{p}ffn.2.bias"] = (dim,)
    return shapes


def official_key_shapes(config: DiTConfig, mask_dim: int = 28) -> dict[str, Shape]:
    """Official Wan-layout key -> shape table of the SCAIL denoiser `config` (mask_dim=0: SCAIL-Preview, no mask
    conv; config.clip_dim=0: no CLIP-image branch). The checkpoint's `in_dim` is latent_dim + 4 I2V mask channels.

    Globals come first, then blocks in order, which is also the order the converter writes them in.
    """
    if mask_dim < 0:
        raise ValueError(f"official_key_shapes: mask_dim must be >= 0, got {mask_dim}")
    c, dim = config, config.dim
    in_dim, kernel = c.latent_dim + I2V_MASK_CHANNELS, c.patch_size
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
            "text_embedding.0.weight": (dim, c.text_dim),
            "text_embedding.0.bias": (dim,),
            "text_embedding.2.weight": (dim, dim),
            "text_embedding.2.bias": (dim,),
            "time_embedding.0.weight": (dim, c.freq_dim),
            "time_embedding.0.bias": (dim,),
            "time_embedding.2.weight": (dim, dim),
            "time_embedding.2.bias": (dim,),
            "time_projection.1.weight": (6 * dim, dim),
            "time_projection.1.bias": (6 * dim,),
            "head.modulation": (1, 2, dim),
            "head.head.weight": (c.out_dim * math.prod(kernel), dim),
            "head.head.bias": (c.out_dim * math.prod(kernel),),
        }
    )
    if c.clip_dim:
        shapes.update(
            {
                "img_emb.proj.0.weight": (c.clip_dim,),
                "img_emb.proj.0.bias": (c.clip_dim,),
                "img_emb.proj.1.weight": (c.clip_dim, c.clip_dim),
                "img_emb.proj.1.bias": (c.clip_dim,),
                "img_emb.proj.3.weight": (dim, c.clip_dim),
                "img_emb.proj.3.bias": (dim,),
                "img_emb.proj.4.weight": (dim,),
                "img_emb.proj.4.bias": (dim,),
            }
        )
    for index in range(c.num_layers):
        shapes.update(block_key_shapes(index, dim=dim, ffn_dim=c.ffn_dim, image=bool(c.clip_dim)))
    return shapes


def config_json(config: DiTConfig, mask_dim: int = 28) -> dict:
    """The official `config.json` fields (names of the released `config-14b.json`) plus text_dim, clip_dim and
    mask_dim, which the released file leaves to the code's defaults."""
    c = config
    fields = {
        "dim": c.dim, "ffn_dim": c.ffn_dim, "num_heads": c.num_heads, "num_layers": c.num_layers,
        "in_dim": c.latent_dim + I2V_MASK_CHANNELS, "out_dim": c.out_dim, "text_dim": c.text_dim,
        "text_len": c.text_len, "freq_dim": c.freq_dim, "clip_dim": c.clip_dim, "mask_dim": mask_dim,
        "patch_size": list(c.patch_size), "model_type": "i2v" if c.clip_dim else "t2v", "eps": c.eps,
    }  # fmt: skip
    return {"_class_name": "WanSCAILModel", **dict(sorted(fields.items()))}


def config_from_json(data: Mapping) -> tuple[DiTConfig, int]:
    """`config.json` fields -> (DiTConfig, mask_dim). Missing optional fields take the released defaults
    (text_dim 4096, clip_dim 1280 for i2v, mask_dim 28)."""
    missing = {"dim", "ffn_dim", "num_heads", "num_layers"} - data.keys()
    if missing:
        raise ValueError(f"denoiser config is missing {sorted(missing)}")
    model_type = data.get("model_type", "i2v")
    if model_type not in ("i2v", "t2v"):
        raise ValueError(f"denoiser config model_type must be 'i2v' or 't2v', got {model_type!r}")
    config = DiTConfig(
        dim=int(data["dim"]), ffn_dim=int(data["ffn_dim"]), num_heads=int(data["num_heads"]),
        num_layers=int(data["num_layers"]), freq_dim=int(data.get("freq_dim", 256)),
        text_dim=int(data.get("text_dim", 4096)), text_len=int(data.get("text_len", 512)),
        latent_dim=int(data.get("in_dim", 20)) - I2V_MASK_CHANNELS, out_dim=int(data.get("out_dim", 16)),
        clip_dim=int(data.get("clip_dim", 1280)) if model_type == "i2v" else 0,
        patch_size=tuple(data.get("patch_size", (1, 2, 2))), eps=float(data.get("eps", 1e-6)),
    )  # fmt: skip
    return config, int(data.get("mask_dim", 28))


def read_config_json(path) -> tuple[DiTConfig, int]:
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
    return config_from_json(data)


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
) -> tuple[DiTConfig, int]:
    """Read every dimension off the tensor shapes of a Wan-layout state dict -> (DiTConfig, mask_dim).

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
    if in_dim <= I2V_MASK_CHANNELS:
        raise ValueError(f"patch_embedding takes {in_dim} channels; expected latent channels + {I2V_MASK_CHANNELS}")
    config = DiTConfig(
        dim=dim,
        ffn_dim=_shape_of(shapes, "blocks.0.ffn.0.weight")[0],
        num_heads=num_heads,
        num_layers=len(layers),
        freq_dim=_shape_of(shapes, "time_embedding.0.weight")[1],
        text_dim=_shape_of(shapes, "text_embedding.0.weight")[1],
        text_len=text_len,
        latent_dim=in_dim - I2V_MASK_CHANNELS,
        out_dim=head_out // math.prod(kernel),
        clip_dim=_shape_of(shapes, "img_emb.proj.0.weight")[0] if "img_emb.proj.0.weight" in shapes else 0,
        patch_size=tuple(kernel),
        eps=eps,
    )
    return config, mask_dim


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
        hint = ""
        if "patch_embedding_pose.weight" in got and "patch_embedding_pose.weight" not in expected:
            hint = (" (the file has in-context pose embeddings, the config builds no pose tokens: an in-context "
                    "checkpoint needs interface=scail2, e.g. via +preset=scail2_14b)")  # fmt: skip
        elif "patch_embedding_pose.weight" in expected and "patch_embedding_pose.weight" not in got:
            hint = " (the file has no pose embedding, as a channel-concat model: interface=channel_concat)"
        raise ValueError(f"{what} does not match the expected key layout: " + "; ".join(parts) + hint)
