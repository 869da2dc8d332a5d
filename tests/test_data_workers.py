"""Worker processes speed the data stages up without changing the data: a world rendered and sharded in two
processes, and latents encoded in two, hold exactly what one process writes."""

from __future__ import annotations

import dataclasses
import tarfile

import torch

from tools import make_synthetic
from tools.toy_budgets import BUDGETS, BUNDLE, VAE_FILE
from tools.toy_stages import stage_latents


def tar_members(folder):
    """{member name: bytes} over every shard under `folder`, minus meta.json and checksums.json (they hold the
    writer's folder path)."""
    out = {}
    for tar in sorted(folder.rglob("*.tar")):
        with tarfile.open(tar) as handle:
            for member in handle.getmembers():
                data = handle.extractfile(member).read()
                if member.name.endswith("meta.json") or member.name.endswith("checksums.json"):
                    continue  # the source path differs; the other files' own bytes are compared
                out[f"{tar.parent.name}/{tar.name}/{member.name}"] = data
    return out


def folder_files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_render_processes_write_the_same_world(tmp_path):
    args = ["--train", "5", "--val", "1", "--test", "2", "--frames", "9", "--samples-per-shard", "2",
            "--contact-sheet", "0", "--p-two-characters", "0.5"]  # fmt: skip
    for workers in (1, 2):
        assert make_synthetic.main(["--out", str(tmp_path / f"w{workers}"), *args, "--workers", str(workers)]) == 0
    one, two = folder_files(tmp_path / "w1" / "folders"), folder_files(tmp_path / "w2" / "folders")
    assert len(one) > 8 * 10 and one == two
    shards_one, shards_two = tar_members(tmp_path / "w1" / "shards"), tar_members(tmp_path / "w2" / "shards")
    assert len(list((tmp_path / "w2" / "shards" / "train").glob("*.tar"))) == 3  # 5 samples, 2 per shard
    assert len(shards_one) > 5 * 8 and shards_one == shards_two


def test_two_latent_processes_write_the_same_latents(tmp_path):
    budget = dataclasses.replace(BUDGETS["micro"], frames=9)
    world = tmp_path / "world"
    assert make_synthetic.main(["--out", str(world), "--train", "5", "--val", "0", "--test", "0", "--frames", "9",
                                "--samples-per-shard", "2", "--contact-sheet", "0"]) == 0  # fmt: skip
    counts = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker process runs: conv sums in another thread count differ in the last bits
    try:
        for workers in (1, 2):  # three pixel shards: the two parts encode two and one
            counts[workers] = stage_latents(tmp_path / f"lat{workers}", world, budget, BUNDLE / VAE_FILE,
                                            splits=("train",), workers=workers)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert counts[1] == counts[2] == {"train": {"samples": 5, "skipped": 0}}
    one, two = tar_members(tmp_path / "lat1"), tar_members(tmp_path / "lat2")
    assert len(list((tmp_path / "lat2" / "train").glob("*.tar"))) == 3
    assert len(one) >= 5 * 3 and one == two
