"""The loader's data-QA report: exact counts of what was decoded, batched and skipped (with reasons)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scail_lab.data import AugmentConfig, FrameSampling, ResolutionBuckets, build_dataloader, make_shards
from scail_lab.data.report import REPORT_JSON, REPORT_MD, summarize, write_data_report
from tests.test_data_fixtures import write_synthetic

SAMPLING = FrameSampling(frame_buckets=(9,), random_start=False)
OFF = AugmentConfig.off()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report")
    good = write_synthetic(root / "folders", 6, p_two_characters=0.0, p_replace=0.5)
    shards = make_shards(root / "folders", root / "shards", samples_per_shard=2, progress=False)["pattern"]
    corrupt = root / "folders" / "train_000100"
    shutil.copytree(good[0], corrupt)
    data = (corrupt / "rendered_v2.mp4").read_bytes()
    (corrupt / "rendered_v2.mp4").write_bytes(data[: len(data) // 3])  # truncated driving video
    missing = root / "folders" / "train_000101"
    shutil.copytree(good[1], missing)
    (missing / "rendered_v2.mp4").unlink()  # no driving video at all
    return {"root": root, "good": good, "bad": [corrupt, missing], "shards": shards}


def run_epoch(report_dir: Path, **kwargs) -> list[str]:
    loader = build_dataloader(report_dir=report_dir, augment=OFF, sampling=SAMPLING, **kwargs)
    return [key for batch in loader for key in batch["key"]]


def test_folder_epoch_counts_and_skips(world, tmp_path):
    folders = [str(p) for p in world["good"] + world["bad"]]
    keys = run_epoch(tmp_path / "rep", folders=folders, batch_size=4)
    assert sorted(keys) == sorted(p.name for p in world["good"])
    report = summarize(tmp_path / "rep")
    assert report["epochs"] == {"0": {"sources": 8, "decoded": 6, "skipped": 2, "shard_problems": 0, "full": 1, "partial": 1}}
    assert report["skipped_unique"] == 2
    skipped = {item["key"]: item for item in report["skipped"]}
    assert set(skipped) == {"train_000100", "train_000101"}
    assert all(item["source"] in {str(p) for p in world["bad"]} for item in skipped.values())
    counters = report["counters"]
    assert counters["shape"] == {"9x64x64 px": 6}
    assert counters["fps"] == {"8 -> 8": 6}
    assert counters["resize"] == {"same": 6} and report["mean_kept_area"] == pytest.approx(1.0)
    assert sum(counters["mode"].values()) == 6 and set(counters["mode"]) <= {"animate", "replace"}
    assert counters["caption"] == {"kept": 6}
    assert report["warnings"] == ["2 samples were skipped (see the skip table)"]  # the partial batch is no warning


def test_upscaling_and_retiming_are_flagged(world, tmp_path):
    sampling = FrameSampling(frame_buckets=(5,), target_fps=4.0, random_start=False)
    loader = build_dataloader(report_dir=tmp_path / "rep", folders=[str(p) for p in world["good"][:2]],
                              buckets=ResolutionBuckets(sizes=((96, 96),)), sampling=sampling, augment=OFF)  # fmt: skip
    assert sum(len(batch["key"]) for batch in loader) == 2
    report = write_data_report(tmp_path / "rep", tmp_path)
    assert report["counters"]["resize"] == {"upscale": 2}
    assert report["counters"]["fps"] == {"8 -> 4": 2}
    assert report["counters"]["shape"] == {"5x96x96 px": 2}
    assert "2 samples were upscaled to fit their bucket" in report["warnings"]
    assert "2 samples were retimed to another fps" in report["warnings"]
    markdown = (tmp_path / REPORT_MD).read_text()
    assert "warning: 2 samples were upscaled" in markdown and "| 8 -> 4 | 2 | 100.0% |" in markdown
    assert json.loads((tmp_path / REPORT_JSON).read_text())["counters"] == report["counters"]


def test_two_workers_write_their_own_files_and_sum_to_the_epoch(world, tmp_path):
    keys = run_epoch(tmp_path / "rep", shards=world["shards"], num_workers=2, batch_size=2)
    assert len(keys) == 6
    files = sorted(p.name for p in (tmp_path / "rep" / "epoch0000").iterdir())
    assert files == ["rank000-worker00.json", "rank000-worker01.json"]
    report = summarize(tmp_path / "rep")
    assert report["epochs"]["0"]["decoded"] == 6 and report["epochs"]["0"]["sources"] == 3
    assert report["counters"]["shape"] == {"9x64x64 px": 6}
    assert report["skipped"] == [] and report["warnings"] == []


def test_a_second_epoch_gets_its_own_files_and_a_rerun_epoch_is_not_counted_twice(world, tmp_path):
    loader = build_dataloader(report_dir=tmp_path / "rep", folders=[str(p) for p in world["good"][:3]],
                              augment=OFF, sampling=SAMPLING)  # fmt: skip
    for _ in range(2):
        list(loader)
    again = build_dataloader(report_dir=tmp_path / "rep", folders=[str(p) for p in world["good"][:3]],
                             augment=OFF, sampling=SAMPLING)  # fmt: skip
    list(again)  # epoch 0 re-run (as a resumed run re-opens it): rewrites epoch 0's file
    report = summarize(tmp_path / "rep")
    assert {e: v["decoded"] for e, v in report["epochs"].items()} == {"0": 3, "1": 3}


def test_summarize_needs_report_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data-report files"):
        summarize(tmp_path)


def test_the_cli_prints_the_report_and_fails_on_warnings(world, tmp_path, capsys):
    from tools import data_report

    run_epoch(tmp_path / "rep", folders=[str(p) for p in world["good"][:2]])
    assert data_report.main([str(tmp_path / "rep")]) == 0
    assert "- no warnings" in capsys.readouterr().out and (tmp_path / REPORT_MD).is_file()
    run_epoch(tmp_path / "bad", folders=[str(world["bad"][0])])
    assert data_report.main([str(tmp_path / "bad"), "--out", str(tmp_path / "qa")]) == 1
    assert "| train_000100 | decode |" in (tmp_path / "qa" / REPORT_MD).read_text()
    assert data_report.main([str(tmp_path / "nothing")]) == 2
