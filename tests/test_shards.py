"""make_shards: exact folder -> shard -> tensor round trip, bad-sample reports, atomic writes, resume."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from scail_lab.data import AugmentConfig, FolderDataset, FrameSampling, build_dataloader, make_shards
from scail_lab.data.media import decode_video, encode_video
from scail_lab.data.shards import ShardJob, list_shards, run_jobs, signature_of
from scail_lab.files import current_umask
from tests.test_data_fixtures import write_synthetic

EVAL = {"sampling": FrameSampling(frame_buckets=(9,), random_start=False), "augment": AugmentConfig.off()}


@pytest.fixture(scope="module")
def good_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good")
    write_synthetic(root, 5, p_two_characters=0.3)
    return root


def shard_keys(out: Path) -> list[str]:
    keys = []
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            keys += sorted({m.name.split(".", 1)[0] for m in tf.getmembers()})
    return keys


def test_folder_shard_tensor_round_trip_is_exact(good_root, tmp_path):
    report = make_shards(good_root, tmp_path / "shards", samples_per_shard=2, progress=False)
    assert report["num_samples"] == 5 and report["num_shards"] == 3 and report["num_skipped"] == 0
    assert report["pattern"].endswith("shard-{000000..000002}.tar")
    loader = build_dataloader(shards=report["pattern"], shuffle=False, **EVAL)
    from_shards = {b["key"][0]: b for b in loader}
    folders = FolderDataset(good_root, **EVAL)
    assert len(from_shards) == len(folders) == 5
    for i in range(len(folders)):
        direct = folders[i]
        batch = from_shards[direct["key"]]
        for name in ("ref_image", "ref_mask", "driving", "driving_mask", "target"):
            assert batch[name].dtype == torch.uint8
            torch.testing.assert_close(batch[name][0], direct[name], rtol=0, atol=0, msg=name)
        assert batch["caption"][0] == direct["caption"] and batch["mode"][0] == direct["mode"]
    # and the tensors are the folder's actual frames
    sample = folders[0]
    raw = decode_video(folders.folders[0] / "target.mp4")
    np.testing.assert_array_equal(sample["target"].permute(1, 2, 3, 0).numpy(), raw)


def _break(folder: Path, how: str) -> None:
    if how == "corrupt":
        data = (folder / "rendered_v2.mp4").read_bytes()
        (folder / "rendered_v2.mp4").write_bytes(data[: len(data) // 2])
    elif how == "missing":
        (folder / "prompt.txt").unlink()
    elif how == "frames":
        target = decode_video(folder / "target.mp4")
        (folder / "target.mp4").write_bytes(encode_video(target[:5], 8.0))


def test_bad_samples_are_skipped_and_reported(good_root, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(good_root, root)
    names = sorted(p.name for p in root.iterdir())
    bad = {names[0]: "corrupt", names[2]: "missing", names[4]: "frames"}
    for name, how in bad.items():
        _break(root / name, how)
    out = tmp_path / "shards"
    report = make_shards(root, out, samples_per_shard=2, progress=False)
    assert report["num_samples"] == 2 and report["num_skipped"] == 3
    assert "unreadable video" in report["skipped"][names[0]]
    assert "missing caption" in report["skipped"][names[2]]
    assert "frame count mismatch" in report["skipped"][names[4]]
    assert shard_keys(out) == [names[1], names[3]]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["skipped"] == report["skipped"]
    assert not list(out.glob(".*tmp*"))  # nothing half-written left behind
    for path in (out / "report.json", out / "shard-000000.json", out / "shard-000000.tar"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # ordinary, shareable files
    loader = build_dataloader(shards=str(out), shuffle=False, **EVAL)
    assert sorted(k for b in loader for k in b["key"]) == [names[1], names[3]]


def test_rerun_resumes_without_duplicates(good_root, tmp_path):
    out = tmp_path / "shards"
    first = make_shards(good_root, out, samples_per_shard=2, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    second = make_shards(good_root, out, samples_per_shard=2, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == stamps  # nothing rewritten
    assert second["num_samples"] == first["num_samples"] == 5
    (out / "shard-000001.tar").unlink()  # as if the run had died before this shard
    third = make_shards(good_root, out, samples_per_shard=2, progress=False)
    keys = shard_keys(out)
    assert third["num_samples"] == 5 and len(keys) == len(set(keys)) == 5


def test_crash_mid_shard_leaves_no_partial_tar(tmp_path):
    def units_ok():
        yield "a", lambda: {"caption.txt": b"x"}

    def units_crash():
        yield "b", lambda: {"caption.txt": b"y"}
        raise RuntimeError("power cut")

    jobs = [ShardJob("s-000000", signature_of(["a"]), units_ok, ["a"]),
            ShardJob("s-000001", signature_of(["b"]), units_crash, ["b"])]  # fmt: skip
    with pytest.raises(RuntimeError):
        run_jobs(jobs, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-000000.json", "s-000000.tar"]
    jobs[1] = ShardJob("s-000001", signature_of(["b"]), lambda: iter([("b", lambda: {"caption.txt": b"y"})]), ["b"])
    report = run_jobs(jobs, tmp_path, progress=False)
    assert report["num_samples"] == 2 and shard_keys(tmp_path) == ["a", "b"]


def test_masks_optional_for_the_none_scheme(good_root, tmp_path):
    root = tmp_path / "nomask"
    shutil.copytree(good_root, root)
    folder = sorted(root.iterdir())[1]
    for name in ("ref_mask.png", "rendered_mask_v2.mp4", "replace_mask.mp4"):
        if (folder / name).exists():
            (folder / name).unlink()
    strict = make_shards(root, tmp_path / "strict", progress=False)
    assert strict["num_samples"] == 4 and "missing reference mask" in strict["skipped"][folder.name]
    loose = make_shards(root, tmp_path / "loose", require_masks=False, progress=False)
    assert loose["num_samples"] == 5 and loose["num_skipped"] == 0
    assert any("masks not required" in n for n in loose["notes"])
    loader = build_dataloader(shards=str(tmp_path / "loose"), mask_scheme="none", batch_size=5, **EVAL)
    batch = next(iter(loader))
    assert "driving_mask" not in batch and "ref_mask" not in batch and batch["target"].shape[0] == 5


def test_shard_lists_expand_braces_lists_and_directories(tmp_path):
    for i in range(3):
        (tmp_path / f"x-{i:03d}.tar").write_bytes(b"")
    assert list_shards(str(tmp_path / "x-{000..002}.tar")) == [str(tmp_path / f"x-{i:03d}.tar") for i in range(3)]
    assert list_shards(str(tmp_path)) == [str(tmp_path / f"x-{i:03d}.tar") for i in range(3)]
    assert len(list_shards(f"{tmp_path}/x-000.tar::{tmp_path}/x-{{001..002}}.tar")) == 3
    with pytest.raises(ValueError):
        list_shards([])
    assert os.path.basename(list_shards([str(tmp_path / "x-001.tar")])[0]) == "x-001.tar"


def test_atomic_write_folder_replaces_whole_folders_and_leaves_nothing_on_failure(tmp_path):
    from scail_lab.data.media import atomic_write_folder

    folder = tmp_path / "sample"
    atomic_write_folder({"a.txt": b"1", "b.txt": b"2"}, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.txt"]
    assert folder.stat().st_mode & 0o777 == 0o777 & ~current_umask()  # an ordinary directory, not mkdtemp's 0700
    atomic_write_folder({"c.txt": b"3"}, folder)  # a rewrite replaces the folder: no stale a.txt / b.txt
    assert [p.name for p in folder.iterdir()] == ["c.txt"]

    class Broken(dict):
        def items(self):
            yield "d.txt", b"4"
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_folder(Broken(), folder)
    assert [p.name for p in folder.iterdir()] == ["c.txt"]  # the old folder stands
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample"]  # no temp folder left behind
