"""Classifier-free guidance for the velocity: v = v_uncond + scale (v_cond - v_uncond).

SCAIL-2 trains with text dropout only, so the unconditional branch keeps every visual condition and swaps the
prompt embedding for the negative prompt's. A scale <= 1 means one conditional forward per step.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from scail_lab.model.tokens import pad_tokens
from scail_lab.types import DiTInputs


def guided_velocity(
    model: Callable[[DiTInputs], Tensor], inputs: DiTInputs, negative_text: Tensor | None, scale: float
) -> Tensor:
    """One guided velocity; conditional and unconditional branches run as one batch of 2B."""
    if scale <= 1.0 or negative_text is None:
        return model(inputs)
    cond_text, uncond_text = pad_tokens([*inputs.text_emb, *negative_text]).split(len(inputs.text_emb))
    both = DiTInputs.cat([inputs.replace(text_emb=cond_text), inputs.replace(text_emb=uncond_text)])
    cond, uncond = model(both).chunk(2, dim=0)
    return uncond + scale * (cond - uncond)
