"""The LightningDataModule: the motion-pair loaders, aligned to the trainer's step for exact resume.

Every epoch of the data pipeline is a pure function of (seed, epoch) (see scail_lab/data/loader.py), so a resumed
run re-opens the interrupted epoch and skips the batches already trained on; its batches then match an
uninterrupted run's. The checkpoint state is the data position: the data epoch being read, the training batches
consumed in it (counted when a batch reaches the device, so Lightning's one-batch prefetch does not skew it) and
whether that epoch was exhausted. The data epoch is this module's own count, not the trainer's: a checkpoint taken
on an epoch's last batch resumes at the next epoch's first batch, where Lightning's restored epoch counter would
re-open the finished epoch and then skip one. Skipped batches are still read and decoded (cheap for latent shards).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning as L

from scail_lab.data.loader import distributed_context


class StepAlignedLoader:
    """Wraps an epoch loader; `position()` gives (epoch, batches already consumed in it) at each new iteration and
    `exhausted()` is called when the epoch's last batch has been handed out."""

    def __init__(self, loader, position: Callable[[], tuple[int, int]], exhausted: Callable[[], None]) -> None:
        self.loader = loader
        self.position = position
        self.exhausted = exhausted

    def __iter__(self):
        epoch, skip = self.position()
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
        iterator = iter(self.loader)
        for _ in range(skip):
            if next(iterator, None) is None:
                self.exhausted()
                return
        yield from iterator
        self.exhausted()  # Lightning prefetches one batch: this runs before the last batch's step ends


class MotionPairDataModule(L.LightningDataModule):
    def __init__(self, train: Callable[[], Iterable] | Iterable, val: Callable[[], Iterable] | Iterable | None = None):
        super().__init__()
        self._train, self._val = train, val
        self._epoch: int | None = None  # the data epoch being read
        self._consumed = 0  # training batches of it handed to the model
        self._done = False  # its last batch has been handed out
        self._resume: dict | None = None

    def state_dict(self) -> dict:
        return {"data_epoch": self._epoch, "consumed_in_epoch": self._consumed, "epoch_done": self._done}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)

    def _position(self) -> tuple[int, int]:
        if self._resume is not None:
            state, self._resume = self._resume, None
            epoch = state.get("data_epoch")
            if epoch is None:  # a checkpoint from before data epochs were recorded: the trainer's epoch
                epoch = self.trainer.current_epoch if self.trainer is not None else 0
            skip = int(state.get("consumed_in_epoch", 0))
            if state.get("epoch_done"):
                epoch, skip = epoch + 1, 0
        else:
            epoch, skip = (0 if self._epoch is None else self._epoch + 1), 0
        self._epoch, self._consumed, self._done = int(epoch), skip, False
        return self._epoch, skip

    def _exhausted(self) -> None:
        self._done = True

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:
            self._consumed += 1
        return batch

    def train_dataloader(self):
        loader = self._train() if callable(self._train) else self._train
        return StepAlignedLoader(loader, self._position, self._exhausted)

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
