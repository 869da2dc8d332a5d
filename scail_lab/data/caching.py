"""Latent shard sets: pixel shards (one latent shard per input shard) or folders -> latent shards.

Uses the same atomic, resumable, reporting writer as the pixel shards (scail_lab.data.shards).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from scail_lab.data import schema
from scail_lab.data.folders import (
    collect_folder,
    find_sample_folders,
    sample_key,
    validate_sample,
    with_validated_meta,
)
from scail_lab.data.latents import LatentCacher
from scail_lab.data.shards import (
    Loader,
    ShardJob,
    iter_shard,
    list_shards,
    plan_folder_jobs,
    run_jobs,
    signature_of,
)

logger = logging.getLogger(__name__)


def _cacher_signature(cacher: LatentCacher) -> dict:
    return {
        "kind": "latent",
        "scheme": cacher.scheme.name,
        "width": cacher.scheme.width,
        "frames": list(cacher.sampling.frame_buckets),
        "fps": cacher.sampling.target_fps,
        "buckets": [list(s) for s in cacher.buckets.sizes],
        "text": cacher.text_encoder is not None,
        "clip": cacher.image_encoder is not None,
        "dtype": str(cacher.dtype.__name__),
        "vae": type(cacher.vae).__name__,
        "windows": [cacher.windows, cacher.window_overlap],
        "pose_downsample": cacher.encoder.pose_downsample,
    }


def plan_latent_jobs_from_shards(urls: Sequence[str], cacher: LatentCacher) -> list[ShardJob]:
    """One latent shard per pixel shard, named after it; its signature covers the input's size and mtime."""
    jobs = []
    names = [Path(u).name.removesuffix(".tar") for u in urls]
    if len(set(names)) != len(names):
        raise ValueError("input shards must have distinct file names (the latent shards reuse them)")
    for url, name in zip(urls, names, strict=True):
        path = Path(url)
        if not path.is_file():
            raise FileNotFoundError(f"input shard does not exist: {url}")
        stat = path.stat()

        def units(url=url) -> Iterator[tuple[str, Loader]]:
            for raw in iter_shard(url):
                yield raw[schema.KEY], (lambda raw=raw: cacher.encode(raw))

        sig = signature_of(
            [str(path.resolve()), str(stat.st_size), str(stat.st_mtime_ns)], _cacher_signature(cacher)
        )
        jobs.append(ShardJob(name, sig, units))
    return jobs


def make_latent_shards(
    cacher: LatentCacher,
    out_dir: str | Path,
    *,
    shards: str | Sequence[str] | None = None,
    folders: str | Path | None = None,
    prefix: str = "latent",
    samples_per_shard: int = 100,
    part: int = 0,
    num_parts: int = 1,
    progress: bool = True,
) -> dict:
    """Cache latents for pixel shards (`shards`) or sample folders (`folders`); returns the report."""
    if (shards is None) == (folders is None):
        raise ValueError("give exactly one of `shards` or `folders`")
    notes = [f"mask scheme {cacher.scheme.name!r} (width {cacher.scheme.width})"]
    if shards is not None:
        jobs = plan_latent_jobs_from_shards(list_shards(shards), cacher)
    else:
        root = Path(folders)
        found = find_sample_folders(root)
        if not found:
            raise FileNotFoundError(f"no sample folders under {root}")
        pixel_jobs = plan_folder_jobs(found, root, prefix=prefix, samples_per_shard=samples_per_shard,
                                      require_masks=cacher.uses_masks)  # fmt: skip
        jobs = []
        for job in pixel_jobs:

            def units(job=job) -> Iterator[tuple[str, Loader]]:
                for key, folder in zip(job.candidates, _folders_of(job, root, found), strict=True):
                    yield key, (lambda folder=folder, key=key: _encode_folder(cacher, folder, key))

            sig = signature_of(job.candidates, _cacher_signature(cacher))
            jobs.append(ShardJob(job.name, sig, units, job.candidates))
    if not cacher.uses_masks:
        notes.append("no mask codes cached (mask scheme 'none'); masks were not required")
    config = _cacher_signature(cacher) | {
        "shards": str(shards) if shards else None,
        "folders": str(folders or ""),
    }
    return run_jobs(
        jobs, out_dir, notes=notes, config=config, part=part, num_parts=num_parts, progress=progress
    )


def _folders_of(job: ShardJob, root: Path, found: Sequence[Path]) -> list[Path]:
    by_key = {sample_key(f, root): f for f in found}
    return [by_key[k] for k in job.candidates]


def _encode_folder(cacher: LatentCacher, folder: Path, key: str) -> list[tuple[str, dict]]:
    raw = collect_folder(folder, key)
    info = validate_sample(raw, require_masks=cacher.uses_masks)
    return cacher.encode(with_validated_meta(raw, info))
