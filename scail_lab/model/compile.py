"""Regional compilation, applied from outside the model: torch.compile per DiT block (every block has the same
structure, so one compiled graph serves all and compile time stays that of one block).

Compilation happens on a block's first call; if the backend fails there (no C++ compiler for inductor on a CPU, an
unsupported op), a warning says why and the model runs eagerly from then on, with the same results.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def compile_blocks(model: nn.Module, backend: str = "inductor", mode: str | None = None, dynamic: bool = False) -> int:
    """Wrap every block in `model.blocks` with a compiled forward that falls back to eager on a compile failure.
    Returns the number of blocks wrapped."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no `blocks` to compile")
    state = {"failed": None}
    for block in blocks:
        eager = block.forward
        compiled = torch.compile(eager, backend=backend, mode=mode, dynamic=dynamic)

        def forward(*args, _compiled=compiled, _eager=eager, **kwargs):
            if state["failed"] is not None:
                return _eager(*args, **kwargs)
            try:
                return _compiled(*args, **kwargs)
            except (torch._dynamo.exc.BackendCompilerFailed, torch._dynamo.exc.Unsupported, RuntimeError,
                    OSError) as err:  # fmt: skip
                state["failed"] = err
                reason = " ".join(str(err).split())[:400] or type(err).__name__
                log.warning("torch.compile (backend %s) failed on a DiT block, running eagerly: %s", backend, reason)
                return _eager(*args, **kwargs)

        block.forward = forward
    model.compile_state = state  # for tests and reports: state["failed"] holds the error after a fallback
    return len(blocks)
