"""Write webdataset tar shards: validated, atomic, resumable, with a report of every skipped sample.

A shard set is planned up front: job i owns a fixed list of candidate samples (or one input shard).
For each job the writer loads every candidate (a loader raising ValueError/FileNotFoundError marks the
sample bad, with the reason), writes the good ones to a temp file beside `<name>.tar`, reads the tar back to check the
member count, then renames it to `<name>.tar` and writes a record `<name>.json` (candidates, written
keys, skipped keys with reasons, bytes, the job's signature, a blake2b checksum of every member). Each sample also
carries its checksums as a `checksums.json` member, which the loader verifies (`verify_checksums`). A rerun skips every job whose tar and
record exist with the same signature, so it resumes after a crash without duplicating samples; jobs can
be split across processes with `part`/`num_parts`. `report.json` aggregates the records of the plan.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scail_lab.data import schema
from scail_lab.data.folders import (
    collect_folder,
    find_sample_folders,
    sample_key,
    validate_sample,
    with_validated_meta,
)
from scail_lab.files import atomic_path, atomic_write_bytes
from scail_lab.model.masks import resolve_mask_scheme

logger = logging.getLogger(__name__)

# A unit's loader returns its sample, or several as [(key suffix, sample)] (latent windows of one long video).
Loader = Callable[[], dict | list[tuple[str, dict]]]


@dataclass
class ShardJob:
    """One output shard: `units` yields (key, loader) pairs; `signature` identifies its inputs."""

    name: str
    signature: str
    units: Callable[[], Iterator[tuple[str, Loader]]]
    candidates: list[str] = field(default_factory=list)


def signature_of(items: Sequence[str], extra: dict | None = None) -> str:
    payload = json.dumps({"items": list(items), "extra": extra or {}}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}"


def brace_pattern(out_dir: Path, prefix: str, count: int) -> str:
    """`dir/prefix-{000000..000007}.tar` for a set of `count` shards."""
    if count == 1:
        return str(out_dir / f"{shard_name(prefix, 0)}.tar")
    return str(out_dir / f"{prefix}-{{{0:06d}..{count - 1:06d}}}.tar")


def _record_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.json"


def is_finished(out_dir: Path, job: ShardJob) -> bool:
    tar, record = out_dir / f"{job.name}.tar", _record_path(out_dir, job.name)
    if not (tar.is_file() and record.is_file()):
        return False
    try:
        return json.loads(record.read_text()).get("signature") == job.signature
    except json.JSONDecodeError:
        return False


def checksum(data: bytes) -> str:
    """blake2b-128 of a member's bytes (about 1 GB/s on one core: negligible next to decoding it)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def member_checksums(sample: dict) -> dict[str, str]:
    """{field: checksum} of every member of a sample (its own checksum member and __keys__ left out)."""
    out = {}
    for name in sorted(sample):
        if name.startswith("__") or name == schema.F_CHECKSUMS:
            continue
        data = sample[name]
        out[name] = checksum(data.encode() if isinstance(data, str) else data)
    return out


def verify_sample_checksums(sample: dict) -> bool:
    """ValueError naming the members whose bytes differ from the checksums written with the sample; False when the
    sample carries no checksums (shards made before they were recorded), True when every member matches."""
    record = sample.get(schema.F_CHECKSUMS)
    if record is None:
        return False
    expected = json.loads(record)
    got = member_checksums(sample)
    absent = sorted(name for name in expected if name not in got)
    if absent:
        raise ValueError(f"incomplete sample: missing member(s) {', '.join(absent)} (a truncated or damaged shard)")
    bad = sorted(name for name in expected if got[name] != expected[name])
    if bad:
        raise ValueError(f"checksum mismatch in {', '.join(bad)} (corrupted in storage or transfer)")
    return True


def _add_sample(tar: tarfile.TarFile, sample: dict) -> tuple[int, dict[str, str]]:
    """Append one sample as members `<key>.<field>` (sorted fields) plus its checksums member; return the member
    count and the checksums."""
    key = sample[schema.KEY]
    sums = member_checksums(sample)
    members = {**{name: sample[name] for name in sums}, schema.F_CHECKSUMS: json.dumps(sums, sort_keys=True)}
    for name in sorted(members):
        data = members[name]
        if isinstance(data, str):
            data = data.encode()
        info = tarfile.TarInfo(f"{key}.{name}")
        info.size = len(data)
        info.mode = 0o444
        tar.addfile(info, io.BytesIO(data))
    return len(members), sums


def _count_members(path: Path) -> int:
    with tarfile.open(path, mode="r|") as tar:
        return sum(1 for m in tar if m.isreg())


def write_job(out_dir: Path, job: ShardJob) -> dict:
    """Load, validate and stream one shard to a temp file; check it; rename it into place; write its record."""
    final = out_dir / f"{job.name}.tar"
    keys, skipped, members, sums = [], {}, 0, {}
    with atomic_path(final) as tmp:
        with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, load in job.units():
                try:
                    loaded = load()
                except (ValueError, FileNotFoundError, OSError) as exc:
                    skipped[key] = str(exc) or type(exc).__name__
                    logger.warning("skip %s: %s", key, skipped[key])
                    continue
                for suffix, sample in loaded if isinstance(loaded, list) else [("", loaded)]:
                    if key + suffix in keys:
                        raise ValueError(f"duplicate sample key {key + suffix!r} in shard {job.name}")
                    sample[schema.KEY] = key + suffix
                    count, sums[key + suffix] = _add_sample(tar, sample)
                    members += count
                    keys.append(key + suffix)
        found = _count_members(tmp)
        if found != members:  # never publish a truncated shard
            raise RuntimeError(f"shard {job.name}: tar holds {found} members, expected {members}")
        size = tmp.stat().st_size
    record = {
        "name": job.name,
        "signature": job.signature,
        "candidates": job.candidates or keys + sorted(skipped),
        "samples": keys,
        "skipped": skipped,
        "bytes": size,
        "checksums": sums,  # {key: {field: blake2b-128}}, also inside each sample as checksums.json
    }
    atomic_write_bytes(_record_path(out_dir, job.name), json.dumps(record, indent=1).encode())
    return record


def run_jobs(
    jobs: Sequence[ShardJob],
    out_dir: str | Path,
    *,
    notes: Sequence[str] = (),
    config: dict | None = None,
    part: int = 0,
    num_parts: int = 1,
    progress: bool = True,
) -> dict:
    """Write every unfinished job of this part, then aggregate all records into `report.json`."""
    if num_parts < 1 or not 0 <= part < num_parts:
        raise ValueError(f"part must be in [0, num_parts), got part={part}, num_parts={num_parts}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mine = [job for i, job in enumerate(jobs) if i % num_parts == part]
    todo = [job for job in mine if not is_finished(out_dir, job)]
    if len(todo) < len(mine):
        logger.info("resuming: %d of %d shards already written", len(mine) - len(todo), len(mine))
    iterator = todo
    if progress and todo:
        from tqdm import tqdm

        iterator = tqdm(todo, desc=f"shards -> {out_dir.name}", unit="shard")
    for job in iterator:
        write_job(out_dir, job)
    return write_report(jobs, out_dir, notes=notes, config=config)


def write_report(
    jobs: Sequence[ShardJob], out_dir: Path, *, notes: Sequence[str] = (), config: dict | None = None
) -> dict:
    """Aggregate the shard records of a plan into report.json (missing records are listed as pending)."""
    shards, skipped, pending = [], {}, []
    total = 0
    for job in jobs:
        path = _record_path(out_dir, job.name)
        if not is_finished(out_dir, job):
            pending.append(job.name)
            continue
        record = json.loads(path.read_text())
        shards.append({"name": job.name, "num_samples": len(record["samples"]), "bytes": record["bytes"]})
        total += len(record["samples"])
        skipped.update(record["skipped"])
    stale = sorted(
        p.name for p in out_dir.glob("*.tar") if p.stem not in {job.name for job in jobs}
    )  # tars from an older plan: not part of this set
    prefix = jobs[0].name.rsplit("-", 1)[0] if jobs else "shard"
    report = {
        "pattern": brace_pattern(out_dir, prefix, len(jobs)) if jobs else None,
        "num_shards": len(jobs),
        "num_samples": total,
        "num_skipped": len(skipped),
        "skipped": dict(sorted(skipped.items())),
        "pending_shards": pending,
        "stale_files": stale,
        "shards": shards,
        "notes": list(notes),
        "config": config or {},
    }
    atomic_write_bytes(out_dir / "report.json", json.dumps(report, indent=1).encode())
    if stale:
        logger.warning("%d tar files in %s are not part of this plan: %s", len(stale), out_dir, stale[:5])
    return report


def summarize(report: dict) -> str:
    """A short human-readable summary of a report (for the command-line tools)."""
    lines = [
        f"{report['num_samples']} samples in {report['num_shards']} shards: {report['pattern']}",
        f"{report['num_skipped']} skipped",
    ]
    lines += [f"  {key}: {reason}" for key, reason in list(report["skipped"].items())[:20]]
    if report["num_skipped"] > 20:
        lines.append(f"  ... ({report['num_skipped'] - 20} more in report.json)")
    if report["pending_shards"]:
        lines.append(f"{len(report['pending_shards'])} shards pending (other parts or failed)")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ folders -> shards
def folder_loader(folder: Path, key: str, require_masks: bool, full_decode: bool = True) -> Loader:
    def load() -> dict:
        sample = collect_folder(folder, key)
        info = validate_sample(sample, require_masks=require_masks, full_decode=full_decode)
        return with_validated_meta(sample, info)

    return load


def plan_folder_jobs(
    folders: Sequence[Path],
    root: Path | None,
    *,
    prefix: str = "shard",
    samples_per_shard: int = 100,
    require_masks: bool = True,
    full_decode: bool = True,
) -> list[ShardJob]:
    """Group sample folders (sorted) into jobs of `samples_per_shard` candidates."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    keyed = [(sample_key(f, root), f) for f in folders]
    keys = [k for k, _ in keyed]
    if len(set(keys)) != len(keys):
        raise ValueError("two sample folders map to the same key; give them distinct relative paths")
    jobs = []
    for start in range(0, len(keyed), samples_per_shard):
        chunk = keyed[start : start + samples_per_shard]
        candidates = [k for k, _ in chunk]

        def units(chunk=chunk) -> Iterator[tuple[str, Loader]]:
            for key, folder in chunk:
                yield key, folder_loader(folder, key, require_masks, full_decode)

        extra = {"require_masks": require_masks, "kind": "pixel"}
        jobs.append(
            ShardJob(shard_name(prefix, len(jobs)), signature_of(candidates, extra), units, candidates)
        )
    return jobs


def make_shards(
    root: str | Path,
    out_dir: str | Path,
    *,
    prefix: str = "shard",
    samples_per_shard: int = 100,
    require_masks: bool = True,
    full_decode: bool = True,
    part: int = 0,
    num_parts: int = 1,
    progress: bool = True,
) -> dict:
    """SCAIL-2-layout example folders under `root` -> pixel shards in `out_dir`. Returns the report."""
    root = Path(root)
    folders = find_sample_folders(root)
    if not folders:
        raise FileNotFoundError(f"no sample folders (with rendered_v2.mp4 / rendered.mp4) under {root}")
    jobs = plan_folder_jobs(
        folders, root, prefix=prefix, samples_per_shard=samples_per_shard, require_masks=require_masks,
        full_decode=full_decode,
    )  # fmt: skip
    notes = (
        [] if require_masks else ["masks not required by the mask scheme: samples without masks were kept"]
    )
    config = {"root": str(root), "samples_per_shard": samples_per_shard, "require_masks": require_masks}
    return run_jobs(
        jobs, out_dir, notes=notes, config=config, part=part, num_parts=num_parts, progress=progress
    )


def require_masks_for(mask_scheme: str) -> bool:
    """Whether a mask-scheme name needs mask files ("none" does not)."""
    return resolve_mask_scheme(mask_scheme).num_classes > 0


def iter_shard(url: str, on_error: Callable[[Exception], None] | None = None) -> Iterator[dict]:
    """Samples of one tar shard (webdataset groups members by key); a broken shard is logged (and passed to
    `on_error`) and ends early."""
    import webdataset as wds

    def warn(exc: Exception) -> bool:
        logger.warning("error reading %s: %s", url, exc)
        if on_error is not None:
            on_error(exc)
        return True

    yield from wds.tariterators.tarfile_samples([{"url": url}], handler=warn)


def shard_index(url: str) -> list[str] | None:
    """The sample keys a local shard's record (`<name>.json` beside `<name>.tar`) promises, or None without one."""
    record = Path(url).with_suffix(".json")
    if not record.is_file():
        return None
    try:
        return list(json.loads(record.read_text()).get("samples", []))
    except (json.JSONDecodeError, OSError):
        return None


def list_shards(pattern: str | Sequence[str]) -> list[str]:
    """Expand shard specs: brace patterns (`a-{000..009}.tar`), `::`-joined lists, directories (*.tar)."""
    from webdataset.shardlists import expand_urls  # brace expansion (webdataset's own dependency)

    specs = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    urls: list[str] = []
    for spec in specs:
        for part in str(spec).split("::"):
            if os.path.isdir(part):
                urls.extend(sorted(str(p) for p in Path(part).glob("*.tar")))
            else:
                urls.extend(expand_urls(part))
    if not urls:
        raise ValueError(f"no shards match {pattern!r}")
    return urls
