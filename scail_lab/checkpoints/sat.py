"""SAT (SwissArmyTransformer) <-> Wan key map of the SCAIL / SCAIL-2 denoiser.

The released training checkpoints (`fsdp2_rank_0000_checkpoint.pt` of SCAIL-2, `mp_rank_00_model_states.pt`
of SCAIL-Preview) hold SAT names under `checkpoint["module"]`, each prefixed `model.diffusion_model.`.
Per layer SAT has 24 tensors and Wan 32: the fused self-attention `query_key_value` splits into q/k/v
(chunk 3 on dim 0), the cross-attention `key_value` and the CLIP `clip_feature_key_value` split into
k/v (chunk 2 on dim 0). The 27 globals (25 without the SCAIL-2 mask conv) map one to one.

One table drives both directions, so a split followed by a fuse is the identity by construction
(and tested).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

SAT_PREFIX = "model.diffusion_model."

# (SAT template, Wan templates). {i} = layer index, {j} = index inside an nn.Sequential, {s} = weight|bias.
# Several Wan templates = the SAT tensor is the dim-0 concatenation of those Wan tensors, in that order.
SAT_WAN_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mixins.adaln_layer.adaLN_modulations.{i}", ("blocks.{i}.modulation",)),
    ("mixins.adaln_layer.query_layernorm_list.{i}.{s}", ("blocks.{i}.self_attn.norm_q.{s}",)),
    ("mixins.adaln_layer.key_layernorm_list.{i}.{s}", ("blocks.{i}.self_attn.norm_k.{s}",)),
    ("mixins.adaln_layer.cross_query_layernorm_list.{i}.{s}", ("blocks.{i}.cross_attn.norm_q.{s}",)),
    ("mixins.adaln_layer.cross_key_layernorm_list.{i}.{s}", ("blocks.{i}.cross_attn.norm_k.{s}",)),
    ("mixins.adaln_layer.clip_feature_key_layernorm_list.{i}.{s}", ("blocks.{i}.cross_attn.norm_k_img.{s}",)),
    (
        "mixins.adaln_layer.clip_feature_key_value_list.{i}.{s}",
        ("blocks.{i}.cross_attn.k_img.{s}", "blocks.{i}.cross_attn.v_img.{s}"),
    ),
    ("mixins.final_layer.adaLN_modulation", ("head.modulation",)),
    ("mixins.final_layer.linear.{s}", ("head.head.{s}",)),
    ("mixins.patch_embed.proj.{s}", ("patch_embedding.{s}",)),
    ("mixins.patch_embed.proj_pose.{s}", ("patch_embedding_pose.{s}",)),
    ("mixins.patch_embed.proj_mask.{s}", ("patch_embedding_mask.{s}",)),
    (
        "transformer.layers.{i}.attention.query_key_value.{s}",
        ("blocks.{i}.self_attn.q.{s}", "blocks.{i}.self_attn.k.{s}", "blocks.{i}.self_attn.v.{s}"),
    ),
    ("transformer.layers.{i}.attention.dense.{s}", ("blocks.{i}.self_attn.o.{s}",)),
    ("transformer.layers.{i}.cross_attention.query.{s}", ("blocks.{i}.cross_attn.q.{s}",)),
    (
        "transformer.layers.{i}.cross_attention.key_value.{s}",
        ("blocks.{i}.cross_attn.k.{s}", "blocks.{i}.cross_attn.v.{s}"),
    ),
    ("transformer.layers.{i}.cross_attention.dense.{s}", ("blocks.{i}.cross_attn.o.{s}",)),
    ("transformer.layers.{i}.post_cross_attention_layernorm.{s}", ("blocks.{i}.norm3.{s}",)),
    ("transformer.layers.{i}.mlp.dense_h_to_4h.{s}", ("blocks.{i}.ffn.0.{s}",)),
    ("transformer.layers.{i}.mlp.dense_4h_to_h.{s}", ("blocks.{i}.ffn.2.{s}",)),
    ("time_embed.{j}.{s}", ("time_embedding.{j}.{s}",)),
    ("adaln_projection.{j}.{s}", ("time_projection.{j}.{s}",)),
    ("text_embedding.{j}.{s}", ("text_embedding.{j}.{s}",)),
    ("clip_proj.proj.{j}.{s}", ("img_emb.proj.{j}.{s}",)),
)

_PLACEHOLDERS = {"{i}": r"(?P<i>\d+)", "{j}": r"(?P<j>\d+)", "{s}": r"(?P<s>weight|bias)"}


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for placeholder, group in _PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape(placeholder), group)
    return re.compile(f"^{pattern}$")


_SAT_PATTERNS = [(_compile(sat), sat, wan) for sat, wan in SAT_WAN_RULES]
_WAN_PATTERNS = [(_compile(wan[0]), sat, wan) for sat, wan in SAT_WAN_RULES]


@dataclass(frozen=True)
class SatPart:
    """Where one Wan tensor lives in a SAT checkpoint: chunk `part` of `parts` (dim 0) of `sat_key`."""

    sat_key: str
    part: int = 0
    parts: int = 1


def sat_to_wan_keys(sat_key: str) -> tuple[str, ...]:
    """Wan key(s) of one SAT key (several when the SAT tensor is fused). Unknown keys raise ValueError."""
    if not sat_key.startswith(SAT_PREFIX):
        raise ValueError(f"SAT key {sat_key!r} does not start with {SAT_PREFIX!r}")
    name = sat_key[len(SAT_PREFIX) :]
    for pattern, _, wan_templates in _SAT_PATTERNS:
        match = pattern.match(name)
        if match:
            return tuple(t.format(**match.groupdict()) for t in wan_templates)
    raise ValueError(f"unknown SAT key {sat_key!r}: not in the SCAIL SAT -> Wan key map")


def plan_sat_to_wan(sat_keys) -> dict[str, SatPart]:
    """Wan key -> SatPart for every key of a SAT state dict (no tensor is touched)."""
    plan: dict[str, SatPart] = {}
    for sat_key in sat_keys:
        wan_keys = sat_to_wan_keys(sat_key)
        for part, wan_key in enumerate(wan_keys):
            if wan_key in plan:
                raise ValueError(
                    f"SAT keys {plan[wan_key].sat_key!r} and {sat_key!r} both map to {wan_key!r}"
                )
            plan[wan_key] = SatPart(sat_key, part, len(wan_keys))
    return plan


def split_fused(tensor: Tensor, parts: int, *, key: str = "tensor") -> tuple[Tensor, ...]:
    """Split a fused SAT tensor into `parts` equal dim-0 chunks (views, no copy)."""
    if parts == 1:
        return (tensor,)
    if tensor.dim() == 0 or tensor.shape[0] % parts:
        raise ValueError(
            f"{key}: fused tensor of shape {tuple(tensor.shape)} cannot be split into {parts} equal parts on dim 0 "
            "(multi-query / grouped SAT attention is not supported)"
        )
    return tuple(tensor.chunk(parts, dim=0))


def sat_part_shape(sat_shape: tuple[int, ...], parts: int, *, key: str = "tensor") -> tuple[int, ...]:
    if parts == 1:
        return tuple(sat_shape)
    if not sat_shape or sat_shape[0] % parts:
        raise ValueError(
            f"{key}: fused shape {tuple(sat_shape)} cannot be split into {parts} equal parts on dim 0"
        )
    return (sat_shape[0] // parts, *sat_shape[1:])


def sat_to_wan_state_dict(sat_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Whole SAT state dict -> Wan layout (split tensors are views of the SAT ones)."""
    out: dict[str, Tensor] = {}
    for wan_key, where in plan_sat_to_wan(sat_state.keys()).items():
        out[wan_key] = split_fused(sat_state[where.sat_key], where.parts, key=where.sat_key)[where.part]
    return out


def wan_to_sat_state_dict(wan_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Wan layout -> SAT layout (fused tensors concatenated on dim 0), keys prefixed `model.diffusion_model.`."""
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for wan_key in wan_state:
        for pattern, sat_template, wan_templates in _WAN_PATTERNS:
            match = pattern.match(wan_key)
            if not match:
                continue
            groups = match.groupdict()
            names = [t.format(**groups) for t in wan_templates]
            missing = [n for n in names if n not in wan_state]
            if missing:
                raise ValueError(f"cannot fuse {sat_template.format(**groups)!r}: missing Wan keys {missing}")
            parts = [wan_state[n] for n in names]
            out[SAT_PREFIX + sat_template.format(**groups)] = (
                parts[0] if len(parts) == 1 else torch.cat(parts, 0)
            )
            used.update(names)
            break
    unknown = sorted(set(wan_state) - used)
    if unknown:
        raise ValueError(
            f"Wan keys with no SAT equivalent: {unknown[:12]}{' ...' if len(unknown) > 12 else ''}"
        )
    return out
