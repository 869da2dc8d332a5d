"""Ulysses sequence parallelism for the denoiser (inference and training): each rank of a group holds 1/S of
the tokens.

Every rank embeds the full (identical) inputs, keeps its contiguous slice of the token sequence and of the RoPE
tables, and runs the blocks on it. Self-attention swaps the split with two all-to-alls: tokens split -> heads
split ([B, L/S, H, d] -> [B, L, H/S, d]), full-sequence attention on H/S heads, and back. Cross-attention and the
FFN are token-local. The head's output is all-gathered so every rank returns the full velocity.

Training: the collectives are autograd functions. The all-to-alls send gradients back the way the tokens came;
the gather passes each rank only its own slice of the output gradient (every rank computes the same loss on the
full output, and each slice's gradient must enter the graph once). Each rank's parameter gradients are then its
tokens' share, and their sum over the group is the full gradient: a data-parallel all-reduce that averages over
all ranks needs the loss scaled by S (training/module.py does that).

The token count L and the head count must be divisible by S (checked with a clear error). The released SCAIL-2
Wan branch has no working sequence parallelism (its USP patch does not match the SCAIL-2 forward); the SAT branch
splits the latent grid spatially instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class SequenceParallel:
    """The process group that shares one sample's tokens (None = the default group)."""

    group: object | None = None

    @property
    def size(self) -> int:
        return dist.get_world_size(self.group)

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    def check(self, num_tokens: int, num_heads: int) -> None:
        if num_tokens % self.size or num_heads % self.size:
            raise ValueError(
                f"sequence parallelism over {self.size} ranks needs the token count ({num_tokens}) and the head count "
                f"({num_heads}) to be divisible by {self.size}; change the resolution / frame count or the group size"
            )

    def local(self, x: Tensor, dim: int = 1) -> Tensor:
        """This rank's contiguous slice along `dim`."""
        n = x.shape[dim] // self.size
        return x.narrow(dim, self.rank * n, n)

    def tokens_to_heads(self, x: Tensor) -> Tensor:
        """[B, L/S, H, d] on each rank -> [B, L, H/S, d] (all tokens, this rank's head group)."""
        return _AllToAll.apply(x, self, True)

    def heads_to_tokens(self, x: Tensor) -> Tensor:
        """[B, L, H/S, d] -> [B, L/S, H, d] (inverse of tokens_to_heads)."""
        return _AllToAll.apply(x, self, False)

    def gather_tokens(self, x: Tensor) -> Tensor:
        """[B, L/S, C] on each rank -> [B, L, C] on every rank (backward: this rank's slice of the gradient)."""
        return _GatherTokens.apply(x, self)


def _tokens_to_heads(sp: SequenceParallel, x: Tensor) -> Tensor:
    b, ll, h, d = x.shape
    s = sp.size
    send = x.reshape(b, ll, s, h // s, d).permute(2, 0, 1, 3, 4).contiguous()  # [S, B, L/S, H/S, d]
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=sp.group)  # recv[i]: rank i's tokens, my heads
    return recv.permute(1, 0, 2, 3, 4).reshape(b, s * ll, h // s, d)


def _heads_to_tokens(sp: SequenceParallel, x: Tensor) -> Tensor:
    b, length, hs, d = x.shape
    s = sp.size
    send = x.reshape(b, s, length // s, hs, d).permute(1, 0, 2, 3, 4).contiguous()  # [S, B, L/S, H/S, d]
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=sp.group)  # recv[i]: my tokens, head group i
    return recv.permute(1, 2, 0, 3, 4).reshape(b, length // s, s * hs, d)


class _AllToAll(torch.autograd.Function):
    """tokens -> heads split (`to_heads`) or back; the adjoint of either all-to-all is the other one."""

    @staticmethod
    def forward(ctx, x: Tensor, sp: SequenceParallel, to_heads: bool) -> Tensor:
        ctx.sp, ctx.to_heads = sp, to_heads
        return _tokens_to_heads(sp, x) if to_heads else _heads_to_tokens(sp, x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        return (_heads_to_tokens(ctx.sp, grad) if ctx.to_heads else _tokens_to_heads(ctx.sp, grad)), None, None


class _GatherTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sp: SequenceParallel) -> Tensor:
        ctx.sp = sp
        parts = [torch.empty_like(x) for _ in range(sp.size)]
        dist.all_gather(parts, x.contiguous(), group=sp.group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.sp.local(grad).contiguous(), None


def new_groups(size: int) -> object:
    """Split the default process group into consecutive groups of `size` ranks; returns this rank's group.

    Every rank must call this (each `new_group` is collective). Ranks r and r' share a group when r // size ==
    r' // size, so data-parallel rank = rank // size.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(
            f"sequence parallelism over {size} ranks needs an initialised process group (a multi-process launch, "
            "e.g. strategy=ddp trainer.devices=N, or torchrun)"
        )
    world, rank = dist.get_world_size(), dist.get_rank()
    if size < 1 or world % size:
        raise ValueError(f"sequence_parallel={size} must divide the world size {world}")
    mine = None
    for start in range(0, world, size):
        group = dist.new_group(list(range(start, start + size)))
        if start <= rank < start + size:
            mine = group
    return mine
