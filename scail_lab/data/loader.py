"""The training data pipeline: shards or folders -> shuffled, decoded, augmented, bucketed batches.

Stages (each DataLoader worker runs its own copy):
1. sources: pixel/latent tar shards (brace patterns, `::` lists, directories) or sample folders;
2. split: every epoch the source list is shuffled with (seed, epoch), identically on every rank, then
   rank r takes sources[r::world_size] and worker k of that rank takes every num_workers-th of those,
   so each sample is read once per epoch. `resampled=True` (multi-node) instead draws sources with
   replacement from a (seed, epoch, rank, worker) stream until the worker's share of
   `samples_per_epoch` is reached, so every rank sees the same number of batches;
3. samples: tar members grouped by key (webdataset), or one folder = one sample;
4. shuffle buffer of `shuffle_buffer` samples (0 = off);
5. decode + frame sampling + bucket fit + augmentation (pixels.pixel_sample / latents.latent_sample).
   An unusable sample is logged and skipped;
6. bucket batching: samples are queued per shape signature and a batch is emitted when a queue holds
   `batch_size` samples; leftovers are emitted at the end of the epoch unless `drop_last`.

With `report_dir` set, every worker records what it decoded, batched and skipped (with the reason) in a
data-QA report (scail_lab/data/report.py); train.py sets it to <run>/data_report.

Batches follow the contract in schema.py (pixel: uint8 ref_image, ref_mask, driving, driving_mask,
target; latent: target_latents, ref_latents, pose_latents, mask codes, text/clip embeddings; both:
caption, mode, num_history_frames, fps, key).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from scail_lab.data import schema
from scail_lab.data.augment import AugmentConfig
from scail_lab.data.folders import collect_folder, find_sample_folders, sample_key
from scail_lab.data.latents import latent_sample
from scail_lab.data.pixels import batch_signature, collate, pixel_sample
from scail_lab.data.report import WorkerReport
from scail_lab.data.shards import iter_shard, list_shards, shard_index, verify_sample_checksums
from scail_lab.data.transforms import FrameSampling, ResolutionBuckets
from scail_lab.model.masks import MaskScheme, resolve_mask_scheme

logger = logging.getLogger(__name__)

KINDS = ("pixel", "latent")


def _as(cls, value, name: str):
    """Accept a config dataclass, a mapping of its fields, or None (defaults)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        try:
            return cls(**dict(value))
        except TypeError as exc:
            raise ValueError(f"bad {name} config {dict(value)}: {exc}") from exc
    raise ValueError(f"{name} must be a {cls.__name__} or a mapping, got {type(value).__name__}")


def distributed_context() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else RANK / WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _pixel_augment(cfg: AugmentConfig) -> AugmentConfig:
    if cfg.vertical_shift:
        raise ValueError("augment.vertical_shift (the jump shift) works on latent shards only (data=latent), "
                         f"got {cfg.vertical_shift} for a pixel dataset")  # fmt: skip
    return cfg


class MotionPairStream(IterableDataset):
    """Iterable dataset of motion-pair batches (see the module docstring for the stages)."""

    def __init__(
        self,
        *,
        shards: str | Sequence[str] | None = None,
        folders: str | Sequence[str] | None = None,
        kind: str = "pixel",
        batch_size: int = 1,
        sampling: FrameSampling | Mapping | None = None,
        buckets: ResolutionBuckets | Mapping | None = None,
        augment: AugmentConfig | Mapping | None = None,
        mask_scheme: str | MaskScheme = "colour",
        shuffle: bool = True,
        shuffle_buffer: int = 64,
        resampled: bool = False,
        samples_per_epoch: int | None = None,
        drop_last: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        report_dir: str | os.PathLike | None = None,
        verify_checksums: bool = True,
    ) -> None:
        super().__init__()
        if (shards is None) == (folders is None):
            raise ValueError("give exactly one of `shards` or `folders`")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "latent" and folders is not None:
            raise ValueError("latent data comes from latent shards; folders hold pixels (kind='pixel')")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if resampled and not samples_per_epoch:
            raise ValueError("resampled mode needs samples_per_epoch (the stream is otherwise endless)")
        self.sources = list_shards(shards) if shards is not None else self._folder_sources(folders)
        self.from_folders = folders is not None
        self.kind, self.batch_size = kind, int(batch_size)
        self.sampling = _as(FrameSampling, sampling, "sampling")
        self.buckets = _as(ResolutionBuckets, buckets, "buckets")
        self.augment = _as(AugmentConfig, augment, "augment")
        if kind == "pixel":
            _pixel_augment(self.augment)
        self.scheme = resolve_mask_scheme(mask_scheme)
        self.shuffle, self.shuffle_buffer = shuffle, int(shuffle_buffer)
        self.resampled, self.samples_per_epoch = resampled, samples_per_epoch
        self.drop_last, self.seed = drop_last, int(seed)
        self.rank, self.world_size = rank, world_size
        self.report_dir = report_dir
        self.verify_checksums = bool(verify_checksums)
        self.report: WorkerReport | None = None  # set per worker and epoch in __iter__
        self.epoch = 0

    @staticmethod
    def _folder_sources(folders: str | Sequence[str]) -> list[str]:
        if isinstance(folders, (str, os.PathLike)):
            found = find_sample_folders(folders)
            if not found:
                raise FileNotFoundError(f"no sample folders under {folders}")
            return [str(f) for f in found]
        missing = [f for f in folders if not Path(f).is_dir()]
        if missing:
            raise FileNotFoundError(f"sample folders do not exist: {missing[:5]}")
        return [str(f) for f in folders]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resolve_distributed(self) -> None:
        """Fix rank / world size in the main process (workers may not see the process group)."""
        rank, world = distributed_context()
        self.rank = rank if self.rank is None else self.rank
        self.world_size = world if self.world_size is None else self.world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")

    # ------------------------------------------------------------------------------- the stages
    def _my_sources(self, worker: int, num_workers: int) -> Iterator[str]:
        rank, world = self.rank or 0, self.world_size or 1
        if self.resampled:
            rng = np.random.default_rng([self.seed, self.epoch, rank, worker, 0x5E5A])
            while True:
                yield self.sources[int(rng.integers(len(self.sources)))]
        order = list(self.sources)
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(order)
        mine = order[rank::world][worker::num_workers]
        if len(self.sources) < world * num_workers and worker == 0 and self.epoch == 0:
            logger.warning(
                "%d sources for %d ranks x %d workers: some workers get no data",
                len(self.sources),
                world,
                num_workers,
            )
        yield from mine

    def _skipped(self, key: str, source: str | None, stage: str, exc: Exception) -> None:
        logger.warning("skip %s %s: %s", stage, key, exc)
        if self.report is not None:
            self.report.skipped(key, source, stage, f"{type(exc).__name__}: {exc}")

    def _raw_samples(self, sources: Iterator[str]) -> Iterator[dict]:
        for source in sources:
            if self.report is not None:
                self.report.opened()
            if self.from_folders:
                try:
                    raws = [collect_folder(source, sample_key(Path(source)))]
                except (OSError, ValueError) as exc:
                    self._skipped(Path(source).name, source, "folder", exc)
                    continue
            else:
                raws = self._shard_samples(source)
            for raw in raws:
                raw.setdefault(schema.URL, source)
                yield raw

    def _shard_problem(self, source: str, problem: str) -> None:
        logger.warning("shard %s: %s", source, problem)
        if self.report is not None:
            self.report.shard_problem(source, problem)

    def _shard_samples(self, source: str) -> Iterator[dict]:
        """The samples of one shard; a read error, an empty tar and every sample its index promised but the tar no
        longer holds (cut off with a truncated end) are reported, each once."""
        errors: list[str] = []
        seen: set[str] = set()
        for raw in iter_shard(source, lambda exc: errors.append(f"{type(exc).__name__}: {exc}")):
            seen.add(str(raw.get(schema.KEY)))
            yield raw
        if errors:
            self._shard_problem(source, f"read error after {len(seen)} samples ({errors[0]})")
        elif not seen:
            self._shard_problem(source, "a valid tar with no samples")
        promised = shard_index(source)
        for key in (promised or []):
            if key not in seen:
                self._skipped(key, source, "missing", ValueError(f"listed in {Path(source).with_suffix('.json').name} "
                                                                 "but not found in the tar (truncated or damaged)"))  # fmt: skip

    def _shuffled(self, samples: Iterator[dict], rng: np.random.Generator) -> Iterator[dict]:
        if not self.shuffle or self.shuffle_buffer <= 1:
            yield from samples
            return
        buf: list[dict] = []
        for sample in samples:
            buf.append(sample)
            if len(buf) >= self.shuffle_buffer:
                yield buf.pop(int(rng.integers(len(buf))))
        while buf:
            yield buf.pop(int(rng.integers(len(buf))))

    def decode(self, raw: Mapping) -> dict:
        """One raw sample -> one training sample (ValueError when unusable)."""
        uses_masks = self.scheme.num_classes > 0
        if self.kind == "pixel":
            return pixel_sample(
                raw, sampling=self.sampling, buckets=self.buckets, augment=self.augment, load_masks=uses_masks,
                seed=self.seed, epoch=self.epoch,
            )  # fmt: skip
        return latent_sample(
            raw, sampling=self.sampling, augment=self.augment, use_masks=uses_masks,
            mask_width=self.scheme.width if uses_masks else None, seed=self.seed, epoch=self.epoch,
        )  # fmt: skip

    def _decoded(self, raws: Iterator[dict]) -> Iterator[dict]:
        for raw in raws:
            if self.verify_checksums and not self.from_folders:
                try:
                    verified = verify_sample_checksums(raw)
                except ValueError as exc:
                    self._skipped(str(raw.get(schema.KEY, "?")), raw.get(schema.URL), "checksum", exc)
                    continue
                if not verified and self.report is not None:
                    self.report.unverified()
            try:
                sample = self.decode(raw)
            except (ValueError, KeyError) as exc:
                self._skipped(str(raw.get(schema.KEY, "?")), raw.get(schema.URL), "decode", exc)
                continue
            if self.report is not None:
                self.report.decoded(sample)
            yield sample

    def _batched(self, samples: Iterator[dict], limit: int | None) -> Iterator[dict]:
        queues: dict[tuple, list[dict]] = {}
        emitted = 0
        for sample in samples:
            queue = queues.setdefault(batch_signature(sample), [])
            queue.append(sample)
            if len(queue) == self.batch_size:
                if self.report is not None:
                    self.report.batch(full=True)
                yield collate(queue)
                queues[batch_signature(sample)] = []
                emitted += self.batch_size
                if limit is not None and emitted >= limit:
                    return
        if not self.drop_last:
            for queue in queues.values():
                if queue:
                    if self.report is not None:
                        self.report.batch(full=False)
                    yield collate(queue)

    def __iter__(self) -> Iterator[dict]:
        if self.rank is None or self.world_size is None:
            self.resolve_distributed()
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, 0xB0F])
        limit = None
        if self.resampled:
            limit = math.ceil(self.samples_per_epoch / ((self.world_size or 1) * num_workers))
        if self.report_dir is not None:
            self.report = WorkerReport.for_worker(self.report_dir, epoch=self.epoch, rank=self.rank, worker=worker,
                                                  kind=self.kind)  # fmt: skip
        samples = self._decoded(self._shuffled(self._raw_samples(self._my_sources(worker, num_workers)), rng))
        try:
            yield from self._batched(samples, limit)
        finally:
            if self.report is not None:
                self.report.flush(force=True)


class EpochDataLoader(DataLoader):
    """A DataLoader that advances the stream's epoch each time it is iterated (reshuffles, new draws)."""

    def __init__(self, dataset: MotionPairStream, start_epoch: int = 0, **kwargs) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self.start_epoch = int(start_epoch)  # kept as an attribute so frameworks can re-create the loader
        self._next_epoch = int(start_epoch)

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = int(epoch)

    def __iter__(self):
        self.dataset.set_epoch(self._next_epoch)
        self.dataset.resolve_distributed()
        self._next_epoch += 1
        return super().__iter__()


def build_dataloader(
    *,
    shards: str | Sequence[str] | None = None,
    folders: str | Sequence[str] | None = None,
    kind: str = "pixel",
    batch_size: int = 1,
    num_workers: int = 0,
    sampling: FrameSampling | Mapping | None = None,
    buckets: ResolutionBuckets | Mapping | None = None,
    augment: AugmentConfig | Mapping | None = None,
    mask_scheme: str | MaskScheme = "colour",
    shuffle: bool = True,
    shuffle_buffer: int = 64,
    resampled: bool = False,
    samples_per_epoch: int | None = None,
    drop_last: bool = False,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    pin_memory: bool = False,
    start_epoch: int = 0,
    report_dir: str | os.PathLike | None = None,
    verify_checksums: bool = True,
) -> EpochDataLoader:
    """The motion-pair training loader (an iterable of batch dicts; see the module docstring).

    Hydra: configs/data/*.yaml call this with `_target_: scail_lab.data.build_dataloader`; nested
    `sampling` / `buckets` / `augment` may be plain mappings of the dataclass fields.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    stream = MotionPairStream(
        shards=shards, folders=folders, kind=kind, batch_size=batch_size, sampling=sampling, buckets=buckets,
        augment=augment, mask_scheme=mask_scheme, shuffle=shuffle, shuffle_buffer=shuffle_buffer,
        resampled=resampled, samples_per_epoch=samples_per_epoch, drop_last=drop_last, seed=seed, rank=rank,
        world_size=world_size, report_dir=report_dir, verify_checksums=verify_checksums,
    )  # fmt: skip
    extra = {"prefetch_factor": 2, "persistent_workers": False} if num_workers > 0 else {}
    return EpochDataLoader(
        stream, start_epoch=start_epoch, num_workers=num_workers, pin_memory=pin_memory, **extra
    )


class FolderDataset(Dataset):
    """Map-style reader of plain example folders (no shards), for benchmarks and small experiments.

    `dataset[i]` is one unbatched pixel sample (pixels.pixel_sample); stack same-bucket samples with
    `scail_lab.data.collate`. Defaults: no augmentation, clips cut from frame 0.
    """

    def __init__(
        self,
        root: str | Sequence[str],
        *,
        sampling: FrameSampling | Mapping | None = None,
        buckets: ResolutionBuckets | Mapping | None = None,
        augment: AugmentConfig | Mapping | None = None,
        mask_scheme: str | MaskScheme = "colour",
        seed: int = 0,
    ) -> None:
        self.folders = [Path(f) for f in MotionPairStream._folder_sources(root)]
        self.sampling = _as(FrameSampling, sampling or FrameSampling(random_start=False), "sampling")
        self.buckets = _as(ResolutionBuckets, buckets, "buckets")
        self.augment = _pixel_augment(_as(AugmentConfig, augment or AugmentConfig.off(), "augment"))
        self.scheme = resolve_mask_scheme(mask_scheme)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.folders)

    def raw(self, index: int) -> dict:
        folder = self.folders[index]
        return collect_folder(folder, sample_key(folder))

    def __getitem__(self, index: int) -> dict:
        return pixel_sample(
            self.raw(index), sampling=self.sampling, buckets=self.buckets, augment=self.augment,
            load_masks=self.scheme.num_classes > 0, seed=self.seed,
        )  # fmt: skip
