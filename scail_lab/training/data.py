"""The LightningDataModule: the motion-pair loaders, aligned to the trainer's step for exact resume.

Every epoch of the data pipeline is a pure function of (seed, epoch) (see scail_lab/data/loader.py), so a resumed
run re-opens the interrupted epoch and skips the batches already trained on; its batches then match an
uninterrupted run's. The count of training batches consumed in the current epoch is this module's checkpoint
state (counted when a batch reaches the device, so Lightning's one-batch prefetch does not skew it). Skipped
batches are still read and decoded (cheap for latent shards).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning as L

from scail_lab.data.loader import distributed_context


class StepAlignedLoader:
    """Wraps an epoch loader; `position()` gives (epoch, batches already consumed in it) at each new iteration."""

    def __init__(self, loader, position: Callable[[], tuple[int, int]]) -> None:
        self.loader = loader
        self.position = position

    def __iter__(self):
        epoch, skip = self.position()
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
        iterator = iter(self.loader)
        for _ in range(skip):
            if next(iterator, None) is None:
                return
        yield from iterator


class MotionPairDataModule(L.LightningDataModule):
    def __init__(self, train: Callable[[], Iterable] | Iterable, val: Callable[[], Iterable] | Iterable | None = None):
        super().__init__()
        self._train, self._val = train, val
        self._consumed = 0  # training batches handed to the model in the current epoch
        self._resume_skip = 0

    def state_dict(self) -> dict:
        return {"consumed_in_epoch": self._consumed}

    def load_state_dict(self, state: dict) -> None:
        self._resume_skip = int(state.get("consumed_in_epoch", 0))

    def _position(self) -> tuple[int, int]:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        skip, self._resume_skip = self._resume_skip, 0
        self._consumed = skip
        return epoch, skip

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:
            self._consumed += 1
        return batch

    def train_dataloader(self):
        loader = self._train() if callable(self._train) else self._train
        return StepAlignedLoader(loader, self._position)

    def val_dataloader(self):
        if self._val is None:
            return []
        return self._val() if callable(self._val) else self._val


def data_parallel_factory(factory: Callable[..., Iterable], sequence_parallel: int) -> Callable[[], Iterable]:
    """Wrap a loader factory so the loader splits data over data-parallel ranks (global rank // S of S
    world-size // S): the S ranks of one sequence-parallel group read the same batches. The rank is read when the
    loader is built (after the process group exists)."""

    def build() -> Iterable:
        rank, world = distributed_context()
        return factory(rank=rank // sequence_parallel, world_size=world // sequence_parallel)

    return build
