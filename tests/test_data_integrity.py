"""Damaged data is caught and named: member checksums (silent corruption that decord decodes without an error),
samples cut off with a truncated tar, empty tars; shard-level and sample-level problems reported apart."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from scail_lab.data import AugmentConfig, FrameSampling, build_dataloader, make_shards, media
from scail_lab.data.report import summarize, to_markdown
from scail_lab.data.shards import iter_shard, list_shards, verify_sample_checksums
from tests.test_data_fixtures import write_synthetic

SAMPLING = FrameSampling(frame_buckets=(9,), random_start=False)
OFF = AugmentConfig.off()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    write_synthetic(root / "folders", 6, p_two_characters=0.0, p_replace=0.0)
    make_shards(root / "folders", root / "shards", samples_per_shard=3, progress=False)
    return root / "shards"


def keys_and_report(source, report_dir: Path, **kwargs) -> tuple[list[str], dict]:
    loader = build_dataloader(shards=str(source), report_dir=report_dir, augment=OFF, sampling=SAMPLING,
                              batch_size=1, shuffle=False, **kwargs)  # fmt: skip
    keys = [key for batch in loader for key in batch["key"]]
    return keys, summarize(report_dir)


def rewrite_member(tar_path: Path, member: str, change) -> None:
    """Rewrite a tar with one member's bytes changed in place (same size, same order)."""
    with tarfile.open(tar_path) as tar:
        items = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as out:
        for info, data in items:
            if info.name == member:
                data = change(data)
            out.addfile(info, io.BytesIO(data))


def test_every_member_carries_a_checksum_in_the_sample_and_the_shard_index(shards):
    record = json.loads((shards / "shard-000000.json").read_text())
    for raw in iter_shard(str(shards / "shard-000000.tar")):
        assert verify_sample_checksums(raw) is True
        sums = json.loads(raw["checksums.json"])
        assert sums == record["checksums"][raw["__key__"]]
        assert {"target.mp4", "driving.mp4", "meta.json", "caption.txt"} <= set(sums)


def test_a_silent_bit_flip_inside_a_video_is_a_named_skip(shards, tmp_path):
    """64 flipped bytes inside target.mp4: decord decodes the damaged file without an error (it would be trained on),
    the checksum catches it and the data report names the sample, the stage and the member."""
    damaged = tmp_path / "shards"
    shutil.copytree(shards, damaged)
    member = "train_000001.target.mp4"

    def flip(data: bytes) -> bytes:
        out = bytearray(data)
        middle = len(out) // 2
        out[middle : middle + 64] = bytes(b ^ 0x5A for b in out[middle : middle + 64])
        return bytes(out)

    rewrite_member(damaged / "shard-000000.tar", member, flip)
    raw = next(r for r in iter_shard(str(damaged / "shard-000000.tar")) if r["__key__"] == "train_000001")
    clean = next(r for r in iter_shard(str(shards / "shard-000000.tar")) if r["__key__"] == "train_000001")
    frames, good = media.decode_video(raw["target.mp4"]), media.decode_video(clean["target.mp4"])
    assert frames.shape == good.shape and not np.array_equal(frames, good)  # decodes, silently wrong
    keys, report = keys_and_report(damaged, tmp_path / "rep")
    assert "train_000001" not in keys and len(keys) == 5
    (skip,) = report["skipped"]
    assert skip["key"] == "train_000001" and skip["stage"] == "checksum"
    assert "checksum mismatch in target.mp4" in skip["reason"]
    unchecked, _ = keys_and_report(damaged, tmp_path / "rep_off", verify_checksums=False)
    assert "train_000001" in unchecked  # what happened before: trained on


def test_a_truncated_shard_names_the_samples_it_lost_once_and_apart_from_shard_problems(shards, tmp_path):
    damaged = tmp_path / "shards"
    shutil.copytree(shards, damaged)
    tar = damaged / "shard-000001.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: int(len(data) * 0.4)])  # cut inside the second sample
    (damaged / "shard-000002.tar").write_bytes(tarfile_bytes())  # a valid tar with no members
    promised = json.loads((damaged / "shard-000001.json").read_text())["samples"]
    keys, report = keys_and_report(damaged, tmp_path / "rep")
    lost = [k for k in promised if k not in keys]
    assert len(lost) == 2 and len(keys) == 3 + len(promised) - len(lost)
    skips = {s["key"]: s for s in report["skipped"]}
    assert set(skips) == set(lost)  # every sample the index promised and training did not get is named
    partial, gone = skips[lost[0]], skips[lost[1]]  # the cut runs through the first, the second is beyond it
    assert partial["stage"] == "checksum" and partial["reason"].startswith("ValueError: incomplete sample: missing")
    assert gone["stage"] == "missing" and "listed in shard-000001.json but not found in the tar" in gone["reason"]
    problems = {Path(p["source"]).name: p["problem"] for p in report["shard_problems"]}
    assert set(problems) == {"shard-000001.tar", "shard-000002.tar"}  # each shard once
    assert problems["shard-000001.tar"].startswith("read error after")
    assert problems["shard-000002.tar"] == "a valid tar with no samples"
    assert report["epochs"]["0"]["shard_problems"] == 2 and report["epochs"]["0"]["skipped"] == len(lost)
    assert report["warnings"][:2] == [f"{len(lost)} samples were skipped (see the skip table)",
                                      "2 shards had problems (see the shard table)"]  # fmt: skip
    assert "### Shards with problems" in to_markdown(report)


def test_latent_shards_carry_checksums_too(shards, tmp_path):
    from scail_lab.data.caching import make_latent_shards
    from tests.test_data_latents import cacher

    make_latent_shards(cacher(), tmp_path / "latents", shards=list_shards(str(shards))[0], progress=False)
    (tar,) = sorted((tmp_path / "latents").glob("*.tar"))
    raws = list(iter_shard(str(tar)))
    assert raws and all(verify_sample_checksums(r) is True for r in raws)
    assert "target_latents.npy" in json.loads(raws[0]["checksums.json"])


def tarfile_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT):
        pass
    return buffer.getvalue()
