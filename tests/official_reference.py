"""A float64 functional re-statement of the released SCAIL-2 forward, from a state dict with official key names.

Written from SCAIL_SPEC.md sections 1-2 (and the structure of the released model_scail2.py): list inputs stacked,
[ref | noisy] concatenated along time and embedded by one conv, the 28-channel ref mask given for 1 + T frames
(zeros on the video frames), pose tokens at half resolution, 512-token zero-padded text with CLIP tokens
prepended, float64 complex RoPE per segment, explicit softmax attention, head and unpatchify of the video slice.
Our model must reproduce it; it shares no code with scail_lab.model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tests import rope_reference


def _lin(sd, name, x):
    return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])


def _rms(sd, name, x, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * sd[name + ".weight"]


def _ln(x, sd=None, name=None, eps=1e-6):
    w = sd[name + ".weight"] if name else None
    b = sd[name + ".bias"] if name else None
    return F.layer_norm(x, x.shape[-1:], w, b, eps)


def _attn(q, k, v, heads, fused=False):
    b, lq, d = q.shape
    q = q.view(b, lq, heads, -1).transpose(1, 2)
    k = k.view(b, k.shape[1], heads, -1).transpose(1, 2)
    v = v.view(b, v.shape[1], heads, -1).transpose(1, 2)
    if fused:  # what the released code calls where flash-attn is absent
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, lq, d)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, lq, d)


def _rope(x, phasors, heads):  # in complex128, as released; back to the working dtype
    b, length, d = x.shape
    return rope_reference.apply(x.view(b, length, heads, -1), phasors).reshape(b, length, d).to(x.dtype)


def reference_forward(
    state_dict,
    *,
    heads,
    text_len,
    x,
    t,
    context,
    clip_fea,
    ref_latents,
    ref_mask,
    pose_latents,
    driving_mask,
    history_mask=None,
    replace=False,
    extra_latents=None,
    extra_masks=None,
    patch=(1, 2, 2),
    dtype=torch.float64,
    fused_attention=False,
):
    """All tensors batched; ref_mask is the single-frame code [B, 28, 1, H, W]. Returns [B, 16, T, H, W] in `dtype`
    (float64 for parity tests; float32 with fused attention is the released forward's CPU arithmetic, which
    tools/bench_model.py times against ours). RoPE and the sinusoidal time embedding stay in float64 as released."""
    sd = {k: v.to(dtype) for k, v in state_dict.items()}
    x, ref_latents, pose_latents = x.to(dtype), ref_latents.to(dtype), pose_latents.to(dtype)
    B, C, T, H, W = x.shape
    ones = lambda u: torch.cat([u, torch.ones_like(u[:, :4])], 1)  # noqa: E731
    conv = lambda u, n: F.conv3d(u.to(dtype), sd[n + ".weight"], sd[n + ".bias"], stride=patch)  # noqa: E731
    hist = torch.zeros_like(x[:, :4]) if history_mask is None else history_mask.to(dtype)
    ref_masks = torch.cat([ref_mask.to(dtype), torch.zeros(B, ref_mask.shape[1], T, H, W, dtype=dtype)], 2)

    xx = conv(torch.cat([ones(ref_latents), torch.cat([x, hist], 1)], 2), "patch_embedding")
    xx = xx + conv(ref_masks, "patch_embedding_mask")
    pose = conv(ones(pose_latents), "patch_embedding_pose") + conv(driving_mask, "patch_embedding_mask")
    seq = torch.cat([xx.flatten(2).transpose(1, 2), pose.flatten(2).transpose(1, 2)], 1)
    n_extra, extra_len = 0, 0
    if extra_latents is not None:
        extra = conv(ones(extra_latents.to(dtype)), "patch_embedding") + conv(
            extra_masks, "patch_embedding_mask"
        )
        n_extra, extra_len = extra.shape[2], extra.shape[2] * extra.shape[3] * extra.shape[4]
        seq = torch.cat([extra.flatten(2).transpose(1, 2), seq], 1)

    half = sd["time_embedding.0.weight"].shape[1] // 2
    ang = torch.outer(t.double(), torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half))
    sinusoid = torch.cat([ang.cos(), ang.sin()], 1).to(dtype)
    e = _lin(sd, "time_embedding.2", F.silu(_lin(sd, "time_embedding.0", sinusoid)))
    e0 = _lin(sd, "time_projection.1", F.silu(e)).unflatten(1, (6, -1))

    ctx = torch.cat(
        [
            context.to(dtype),
            torch.zeros(B, text_len - context.shape[1], context.shape[2], dtype=dtype),
        ],
        1,
    )
    ctx = _lin(sd, "text_embedding.2", F.gelu(_lin(sd, "text_embedding.0", ctx), approximate="tanh"))
    img = clip_fea.to(dtype)
    img = F.layer_norm(img, img.shape[-1:], sd["img_emb.proj.0.weight"], sd["img_emb.proj.0.bias"], 1e-5)
    img = _lin(sd, "img_emb.proj.3", F.gelu(_lin(sd, "img_emb.proj.1", img)))
    img = F.layer_norm(img, img.shape[-1:], sd["img_emb.proj.4.weight"], sd["img_emb.proj.4.bias"], 1e-5)
    context = torch.cat([img, ctx], 1)
    n_img = context.shape[1] - text_len

    hp, wp = H // patch[1], W // patch[2]
    head_dim = sd["blocks.0.self_attn.q.weight"].shape[0] // heads
    phasors = rope_reference.scail2_phasors(head_dim, T, hp, wp, num_extra=n_extra, replace=replace)

    h = seq
    num_layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(num_layers):
        p = f"blocks.{i}."
        m = (sd[p + "modulation"] + e0).chunk(6, 1)
        u = _ln(h) * (1 + m[1]) + m[0]
        q = _rope(_rms(sd, p + "self_attn.norm_q", _lin(sd, p + "self_attn.q", u)), phasors, heads)
        k = _rope(_rms(sd, p + "self_attn.norm_k", _lin(sd, p + "self_attn.k", u)), phasors, heads)
        y = _lin(sd, p + "self_attn.o", _attn(q, k, _lin(sd, p + "self_attn.v", u), heads, fused_attention))
        h = h + y * m[2]
        u = _ln(h, sd, p + "norm3")
        q = _rms(sd, p + "cross_attn.norm_q", _lin(sd, p + "cross_attn.q", u))
        ci, ct = context[:, :n_img], context[:, n_img:]
        k_txt = _rms(sd, p + "cross_attn.norm_k", _lin(sd, p + "cross_attn.k", ct))
        k_img = _rms(sd, p + "cross_attn.norm_k_img", _lin(sd, p + "cross_attn.k_img", ci))
        y = _attn(q, k_txt, _lin(sd, p + "cross_attn.v", ct), heads, fused_attention) + _attn(
            q, k_img, _lin(sd, p + "cross_attn.v_img", ci), heads, fused_attention
        )
        h = h + _lin(sd, p + "cross_attn.o", y)
        u = _ln(h) * (1 + m[4]) + m[3]
        h = h + _lin(sd, p + "ffn.2", F.gelu(_lin(sd, p + "ffn.0", u), approximate="tanh")) * m[5]

    shift, scale = (sd["head.modulation"] + e.unsqueeze(1)).chunk(2, 1)
    out = _lin(sd, "head.head", _ln(h) * (1 + scale) + shift)
    start = extra_len + hp * wp
    out = out[:, start : start + T * hp * wp].reshape(B, T, hp, wp, *patch, C)
    return torch.einsum("bfhwpqrc->bcfphqwr", out).reshape(B, C, T * patch[0], H, W)
