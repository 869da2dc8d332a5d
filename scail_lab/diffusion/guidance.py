"""Classifier-free guidance for the velocity: v = v_uncond + scale (v_cond - v_uncond).

SCAIL-2 trains with text dropout only, so the unconditional branch keeps every visual condition and swaps the
prompt embedding for the negative prompt's. A scale <= 1 means one conditional forward per step. On one process
both branches run as one batch; with `CfgParallel` (torchrun, sample.py cfg_parallel=true) the two ranks of a CFG
group each run one branch and exchange velocities every step (both then hold the same latents). Pose guidance
(`pose_scale`, an option of ours, not SCAIL-2's) adds a branch with the driving clip blacked out.
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
    cfg_parallel: CfgParallel | None = None, pose_free: DiTInputs | None = None, pose_scale: float = 1.0,
) -> Tensor:
    """One guided velocity; conditional and unconditional branches run as one batch of 2B, or one per rank.

    Pose guidance (`pose_free`: the same inputs with the driving clip and its masks blacked out, as pose dropout
    trains; `pose_scale` > 1) adds a term along what the pose changes:
        v = v_cond + (scale - 1) (v_cond - v_negative_text) + (pose_scale - 1) (v_cond - v_pose_free),
    each term only when its scale is > 1 (with text guidance off: v_pose_free + pose_scale (v_cond - v_pose_free)).
    All branches run as one batch.
    """
    if pose_free is not None and pose_scale > 1.0:
        if cfg_parallel is not None:
            raise ValueError("pose guidance (pose_guide_scale > 1) does not run under cfg_parallel")
        branches = [inputs]
        text_on = scale > 1.0 and negative_text is not None
        if text_on:
            cond_text, uncond_text = pad_tokens([*inputs.text_emb, *negative_text]).split(len(inputs.text_emb))
            branches = [inputs.replace(text_emb=cond_text), inputs.replace(text_emb=uncond_text)]
        branches.append(pose_free.replace(text_emb=branches[0].text_emb))
        out = model(DiTInputs.cat(branches)).chunk(len(branches), dim=0)
        cond = out[0]
        v = cond + (pose_scale - 1.0) * (cond - out[-1])
        return v + (scale - 1.0) * (cond - out[1]) if text_on else v
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
