"""Block offload for inference: stream the denoiser's transformer blocks from CPU memory onto the compute device.

The 14B SCAIL-2 denoiser holds about 33 GB of bf16 weights (one block: ~0.81 GB), more than a 24 GB card.
`BlockOffload(model, device, num_blocks)` keeps the weights of the last `num_blocks` blocks in CPU memory (pinned
when the device is CUDA) and copies each block onto `device` just before its forward, dropping the copy right
after; on CUDA the next offloaded block is copied on a side stream while the current one computes. Everything
else (embeddings, head, the other blocks) lives on `device`. Peak weight memory on the device is then the
resident part plus two blocks.

Inference only: weights are read, never written back (merge LoRAs before offloading) and gradients are refused.
On CPU (this project's CI) the copies are no-ops; the bookkeeping, hook order and outputs are what the tests check.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def _tensors(module: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Parameters and buffers of `module` by qualified name (the tensors an offloaded block swaps)."""
    yield from module.named_parameters()
    yield from ((n, b) for n, b in module.named_buffers() if b is not None)


class BlockOffload:
    """Keep the last `num_blocks` of `model.blocks` in CPU memory and stream them onto `device` per forward."""

    def __init__(self, model: nn.Module, device: torch.device | str, num_blocks: int, prefetch: bool = True) -> None:
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.ModuleList):
            raise ValueError(f"{type(model).__name__} has no `blocks` ModuleList to offload")
        if not 0 < num_blocks <= len(blocks):
            raise ValueError(f"offload_blocks must be in [1, {len(blocks)}] for this model, got {num_blocks}")
        self.model, self.device = model, torch.device(device)
        self.indices = list(range(len(blocks) - num_blocks, len(blocks)))
        offloaded = {id(blocks[i]) for i in self.indices}
        for name, child in model.named_children():  # everything but the offloaded blocks goes to the device
            if name != "blocks":
                child.to(self.device)
        for tensor in model.parameters(recurse=False):
            tensor.data = tensor.data.to(self.device)
        for block in blocks:
            if id(block) not in offloaded:
                block.to(self.device)
        pin = self.device.type == "cuda"
        self.storage: dict[int, dict[str, Tensor]] = {}
        for i in self.indices:
            blocks[i].to("cpu")
            self.storage[i] = {n: (t.data.pin_memory() if pin else t.data) for n, t in _tensors(blocks[i])}
            for name, tensor in _tensors(blocks[i]):
                tensor.data = self.storage[i][name]
        self.stream = torch.cuda.Stream(self.device) if prefetch and self.device.type == "cuda" else None
        self.prefetch = prefetch
        self.loaded: dict[int, tuple[dict[str, Tensor], object]] = {}  # block -> (device copies, ready event)
        self.stats = {"copies": 0, "bytes": 0, "max_loaded": 0}
        self._hooks = []
        for i in self.indices:
            self._hooks.append(blocks[i].register_forward_pre_hook(lambda m, a, i=i: self._before(i)))
            self._hooks.append(blocks[i].register_forward_hook(lambda m, a, o, i=i: self._after(i)))
        if prefetch and self.indices[0] > 0:  # the last resident block starts copying the first offloaded one
            first = self.indices[0]
            self._hooks.append(blocks[first - 1].register_forward_pre_hook(lambda m, a: self._copy(first)))
        size = sum(t.numel() * t.element_size() for i in self.indices for t in self.storage[i].values())
        logger.info("offloading %d of %d blocks (%.2f GB of weights) to CPU", num_blocks, len(blocks), size / 1e9)

    def _copy(self, index: int) -> None:
        """Start copying block `index` onto the device (on the side stream when there is one)."""
        if index in self.loaded:
            return
        event = None
        if self.stream is not None:
            with torch.cuda.stream(self.stream):
                copies = {n: t.to(self.device, non_blocking=True) for n, t in self.storage[index].items()}
                event = torch.cuda.Event()
                event.record(self.stream)
        else:
            copies = {n: t.to(self.device) for n, t in self.storage[index].items()}
        self.loaded[index] = (copies, event)
        self.stats["copies"] += 1
        self.stats["bytes"] += sum(t.numel() * t.element_size() for t in copies.values())
        self.stats["max_loaded"] = max(self.stats["max_loaded"], len(self.loaded))

    def _before(self, index: int) -> None:
        if torch.is_grad_enabled():
            raise RuntimeError("block offload is for inference: run the model under torch.no_grad()")
        self._copy(index)
        copies, event = self.loaded[index]
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for tensor in copies.values():
                tensor.record_stream(current)  # the side stream's allocation is used on this stream
        for name, tensor in _tensors(self.model.blocks[index]):
            tensor.data = copies[name]
        position = self.indices.index(index)
        if self.prefetch and position + 1 < len(self.indices):
            self._copy(self.indices[position + 1])

    def _after(self, index: int) -> None:
        for name, tensor in _tensors(self.model.blocks[index]):
            tensor.data = self.storage[index][name]
        self.loaded.pop(index, None)

    def remove(self) -> None:
        """Detach the hooks; the offloaded blocks stay in CPU memory."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.loaded.clear()
