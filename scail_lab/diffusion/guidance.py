"""Classifier-free guidance for the velocity: v = v_uncond + scale (v_cond - v_uncond).

SCAIL-2 trains with text dropout only, so the unconditional branch keeps every visual condition and swaps the
prompt embedding for the negative prompt's. A scale <= 1 means one conditional forward per step. On one process
both branches run as one batch; with `CfgParallel` (torchrun, sample.py cfg_parallel=true) the two ranks of a CFG
group each run one branch and exchange velocities every step (both then hold the same latents).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from scail_lab.model.tokens import pad_tokens
from scail_lab.types import DiTInputs


@dataclass(frozen=True)
class CfgParallel:
    """This rank's branch (0: conditional, 1: unconditional) and the 2-rank group it swaps velocities in."""

    group: object  # torch.distributed ProcessGroup
    branch: int

    def __post_init__(self) -> None:
        if self.branch not in (0, 1):
            raise ValueError(f"CFG branch must be 0 (conditional) or 1 (unconditional), got {self.branch}")


def guided_velocity(
    model: Callable[[DiTInputs], Tensor], inputs: DiTInputs, negative_text: Tensor | None, scale: float,
    cfg_parallel: CfgParallel | None = None,
) -> Tensor:
    """One guided velocity; conditional and unconditional branches run as one batch of 2B, or one per rank."""
    if scale <= 1.0 or negative_text is None:
        return model(inputs)
    if cfg_parallel is not None:
        import torch.distributed as dist

        text = inputs.text_emb if cfg_parallel.branch == 0 else negative_text
        mine = model(inputs.replace(text_emb=text)).contiguous()
        both = [torch.empty_like(mine), torch.empty_like(mine)]
        dist.all_gather(both, mine, group=cfg_parallel.group)  # group ranks are ordered by branch
        cond, uncond = both
        return uncond + scale * (cond - uncond)
    cond_text, uncond_text = pad_tokens([*inputs.text_emb, *negative_text]).split(len(inputs.text_emb))
    both = DiTInputs.cat([inputs.replace(text_emb=cond_text), inputs.replace(text_emb=uncond_text)])
    cond, uncond = model(both).chunk(2, dim=0)
    return uncond + scale * (cond - uncond)
